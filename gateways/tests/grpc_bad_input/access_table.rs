//! The access matrix's expected table, RPC by RPC in `Rpc::ALL` order: "allowed" or the
//! exact code of the refusal for each role (`ROLES`).

/// The expected table: "allowed" or the exact code of the refusal. The owner is merchant A
/// (for vouchers, previews and orders A made) and node X (for what was assigned to X);
/// where an RPC names nothing owned (Reserve, Preview, PlaceOrder, RegisterNode, Heartbeat,
/// SubscribeAssignments, FetchMedia) the "other" merchant or node is simply another one.
/// Publisher accounts (issue 28), last in `Rpc::ALL`: the operator's only.
pub(super) const PUBLISHER_ACCESS: &[(&str, [&str; 7])] = &[
    ("RegisterPublisher", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("AddPublisherKey", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    // Key rotation: the operator's only (a rotation to the key the engine has is a no-op;
    // there is no retired key to revoke); a merchant's own rental window: any merchant's.
    ("RotateEngineKey", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("RevokeEngineKey", ["NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("RotateTokenKey", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("RotateCheckpointKey", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("SetRentalWindow", ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
];

pub(super) const EXPECTED_ACCESS: &[(&str, [&str; 7])] = &[
    //                              operator            merchant owner      merchant other      node owner          node other          auditor             anonymous
    (
        "Reserve",
        /*             */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Authorize",
        /*           */
        ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Void",
        /*                */
        ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Refund",
        /*              */
        ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "IssueVoucher",
        /*        */ ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Preview",
        /*             */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "GetVoucher",
        /*          */
        ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "PlaceOrder",
        /*          */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "BindUnit",
        /*            */
        ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "CompleteUnit",
        /*        */ ["PermissionDenied", "allowed", "NotFound", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "SellPoints",
        /*          */ ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterNode",
        /*        */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Heartbeat",
        /*           */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "SubscribeAssignments",
        /**/ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Redeem",
        /*              */
        ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "CompleteDelivery",
        /*    */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "FailDelivery",
        /*        */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "EndPreview",
        /*          */
        ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "FetchMedia",
        /*          */ ["PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "allowed", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "PublishMedia",
        /*        */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterMerchant",
        /*    */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterNodeCredential",
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "CertifyConsumer",
        /*     */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RevokeCert",
        /*          */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "TopUpPoints",
        /*         */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RegisterAuditor",
        /*     */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "Replay",
        /*              */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"],
    ),
    (
        "VerifyChain",
        /*         */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"],
    ),
    (
        "Totals",
        /*              */ ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"],
    ),
    (
        "GetStats",
        /*            */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "GetConfig",
        /*           */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "SetConfig",
        /*           */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "DrainNode",
        /*           */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RemoveNode",
        /*          */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "SuspendMerchant",
        /*     */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "ReinstateMerchant",
        /*   */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RevokeAuditor",
        /*       */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "WithdrawMedia",
        /*       */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "ChangePrice",
        /*         */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    (
        "RevokeCerts",
        /*         */
        ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"],
    ),
    // No credential: a request signed with acct-1's passport is answered whoever sends it.
    ("GetPoints", /*     */ ["allowed", "allowed", "allowed", "allowed", "allowed", "allowed", "allowed"]),
];
