//! The access matrix's rows for the read RPCs (issue 23), which come last in `Rpc::ALL`:
//! the expected cells and the request the rightful caller makes. A merchant's reads are
//! its own, so the "other" merchant is allowed too (and reads its own range: the
//! bad-input table shows merchant B's list without A's vouchers); the operator's reads
//! are the operator's alone.

use super::*;

pub(super) const READ_ACCESS: &[(&str, [&str; 7])] = &[
    //                   operator            merchant owner  merchant other  node owner          node other          auditor             anonymous
    ("ListVouchers", ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("GetStatement", ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("ListCatalog", ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("SearchCatalog", ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("GetLedger", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("ListParties", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("GetAccountPoints", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    ("ListOrders", ["PermissionDenied", "allowed", "allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "Unauthenticated"]),
    // A rights holder's statement: AuditService, the auditor's and the operator's.
    ("Statement", ["allowed", "PermissionDenied", "PermissionDenied", "PermissionDenied", "PermissionDenied", "allowed", "Unauthenticated"]),
];

/// The request the rightful caller of a read RPC makes (answered; nothing is written).
pub(super) fn access_request(rpc: Rpc) -> Req {
    match rpc {
        Rpc::ListVouchers => Req::ListVouchers(pb::ListVouchersRequest { set: "undelivered".into(), limit: 10, ..Default::default() }),
        Rpc::GetStatement => Req::GetStatement(pb::GetStatementRequest { period: "2026-01".into() }),
        Rpc::ListCatalog => Req::ListCatalog(pb::ListCatalogRequest::default()),
        Rpc::SearchCatalog => Req::SearchCatalog(pb::SearchCatalogRequest { text: "song".into(), ..Default::default() }),
        Rpc::GetLedger => Req::GetLedger(pb::GetLedgerRequest {}),
        Rpc::ListParties => Req::ListParties(pb::ListPartiesRequest { kind: "merchant".into(), ..Default::default() }),
        Rpc::GetAccountPoints => Req::GetAccountPoints(pb::AccountPointsRequest { account_id: "acct-1".into() }),
        Rpc::ListOrders => Req::ListOrders(pb::ListOrdersRequest { limit: 10, ..Default::default() }),
        Rpc::Statement => Req::Statement(pb::RightsStatementRequest { holder: "artist".into(), name: "Artist".into(), period: "2026-01".into() }),
        other => panic!("{other:?} is not a read RPC"),
    }
}
