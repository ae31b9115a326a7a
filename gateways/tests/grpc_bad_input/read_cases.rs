//! The bad-input cases of the read RPCs (issue 23): MerchantService's ListVouchers,
//! ListOrders, GetStatement, ListCatalog and SearchCatalog, AdminService's GetLedger, ListParties and
//! GetAccountPoints. Each refusal names its field; the controls are answered. (The empty
//! message, undecodable bytes, size limits and credentials of every RPC are in `cases`;
//! the access matrix's rows for these RPCs in `read_access`.)

use super::*;

fn vouchers(set: &str, status: &str, limit: u32, cursor: &str) -> Req {
    Req::ListVouchers(pb::ListVouchersRequest { set: set.into(), status: status.into(), limit, cursor: cursor.into() })
}

fn statement(period: &str) -> Req {
    Req::GetStatement(pb::GetStatementRequest { period: period.into() })
}

fn search(text: &str, limit: u32, cursor: &str) -> Req {
    Req::SearchCatalog(pb::SearchCatalogRequest { text: text.into(), cursor: cursor.into(), limit })
}

fn catalog(limit: u32, cursor: &str) -> Req {
    Req::ListCatalog(pb::ListCatalogRequest { cursor: cursor.into(), limit })
}

fn orders(limit: u32, cursor: &str) -> Req {
    Req::ListOrders(pb::ListOrdersRequest { limit, cursor: cursor.into() })
}

fn parties(kind: &str, limit: u32, cursor: &str) -> Req {
    Req::ListParties(pb::ListPartiesRequest { kind: kind.into(), cursor: cursor.into(), limit })
}

fn rights(holder: &str, name: &str, period: &str) -> Req {
    Req::Statement(pb::RightsStatementRequest { holder: holder.into(), name: name.into(), period: period.into() })
}

fn points(account: &str) -> Req {
    Req::GetAccountPoints(pb::AccountPointsRequest { account_id: account.into() })
}

pub(super) fn read_cases(w: &World) -> Vec<Case> {
    let a = Meta::of("merchant A", &w.a);
    let op = Meta::of("operator", &w.operator);
    let ia = Code::InvalidArgument;
    let long_cursor = "ab".repeat(300);
    let merchant: Vec<(&str, String, Req, Code, &str)> = vec![
        ("invalid field", "set not a set".into(), vouchers("sold", "", 0, ""), ia, "set"),
        ("invalid field", "status None".into(), vouchers("", "None", 0, ""), ia, "status"),
        ("invalid field", "status in lower case".into(), vouchers("", "pending", 0, ""), ia, "status"),
        ("invalid field", "status outside the set".into(), vouchers("pending", "Delivered", 0, ""), ia, "status"),
        ("invalid field", "limit 501".into(), vouchers("", "", 501, ""), ia, "limit"),
        ("invalid field", "cursor not hex".into(), vouchers("", "", 0, "zz"), ia, "cursor"),
        ("invalid field", "cursor of 300 bytes".into(), vouchers("", "", 0, &long_cursor), ia, "cursor"),
        ("control", "limit 500, set and status together".into(), vouchers("undelivered", "Issued", 500, ""), Code::Ok, ""),
        ("control", "a cursor past the end".into(), vouchers("", "", 1, &"ff".repeat(20)), Code::Ok, ""),
        ("invalid field", "period month 13".into(), statement("2026-13"), ia, "period"),
        ("invalid field", "period one-digit month".into(), statement("2026-1"), ia, "period"),
        ("invalid field", "period with a slash".into(), statement("2026/01"), ia, "period"),
        ("invalid field", "period a date".into(), statement("2026-01-01"), ia, "period"),
        ("control", "a month without sales".into(), statement("1999-01"), Code::Ok, ""),
        ("invalid field", "search text blank".into(), search("   ", 0, ""), ia, "text"),
        ("invalid field", "search text of 129 characters".into(), search(&"a".repeat(129), 0, ""), ia, "text"),
        ("invalid field", "search text with a control character".into(), search("so\u{7}ng", 0, ""), ia, "text"),
        ("invalid field", "search limit 201".into(), search("Song", 201, ""), ia, "limit"),
        ("invalid field", "search cursor not hex".into(), search("Song", 0, "0x12"), ia, "cursor"),
        ("invalid field", "search cursor not UTF-8".into(), search("Song", 0, "ff"), ia, "cursor"),
        ("control", "search text of 128 characters".into(), search(&"a".repeat(128), 0, ""), Code::Ok, ""),
        ("invalid field", "catalog limit 201".into(), catalog(201, ""), ia, "limit"),
        ("invalid field", "catalog cursor odd hex".into(), catalog(0, "abc"), ia, "cursor"),
        ("control", "catalog limit 200".into(), catalog(200, ""), Code::Ok, ""),
        ("invalid field", "orders limit 201".into(), orders(201, ""), ia, "limit"),
        ("invalid field", "orders cursor not hex".into(), orders(0, "xy"), ia, "cursor"),
        ("invalid field", "orders cursor not UTF-8".into(), orders(0, "ff"), ia, "cursor"),
        ("control", "orders limit 200".into(), orders(200, ""), Code::Ok, ""),
        ("control", "orders after an unknown order".into(), orders(0, "6f2d6e6f6e65"), Code::Ok, ""),
    ];
    let operator: Vec<(&str, String, Req, Code, &str)> = vec![
        ("invalid field", "kind consumer".into(), parties("consumer", 0, ""), ia, "kind"),
        ("invalid field", "parties limit 501".into(), parties("", 501, ""), ia, "limit"),
        ("invalid field", "parties cursor not hex".into(), parties("", 0, "g0"), ia, "cursor"),
        ("control", "certificates, limit 500".into(), parties("certificate", 500, ""), Code::Ok, ""),
        ("invalid field", "account id with a space".into(), points("acct 1"), ia, "account_id"),
        ("invalid field", "account id of 65 characters".into(), points(&"a".repeat(65)), ia, "account_id"),
        ("unknown id", "account no event named".into(), points("acct-nobody"), Code::NotFound, "unknown"),
        ("control", "acct-1".into(), points("acct-1"), Code::Ok, ""),
    ];
    let auditor: Vec<(&str, String, Req, Code, &str)> = vec![
        ("invalid field", "holder merchant".into(), rights("merchant", "Shop A", "2026-01"), ia, "holder"),
        ("invalid field", "holder in capitals".into(), rights("ARTIST", "Artist", "2026-01"), ia, "holder"),
        ("invalid field", "name blank".into(), rights("artist", "  ", "2026-01"), ia, "name"),
        ("invalid field", "name of 257 characters".into(), rights("owner", &"a".repeat(257), "2026-01"), ia, "name"),
        ("invalid field", "name with a control character".into(), rights("rights_agent", "age\u{1b}nt", "2026-01"), ia, "name"),
        ("invalid field", "statement period month 13".into(), rights("artist", "Artist", "2026-13"), ia, "period"),
        ("invalid field", "statement period a date".into(), rights("artist", "Artist", "2026-01-01"), ia, "period"),
        ("control", "a name of 256 characters, a month without usage".into(), rights("owner", &"a".repeat(256), "1999-01"), Code::Ok, ""),
    ];
    let mut cases = Vec::new();
    for (who, table) in [(&a, merchant), (&op, operator), (&Meta::of("auditor", &w.auditor), auditor)] {
        for (category, what, request, expect, field) in table {
            let mut case = case(category, what, who, request, expect);
            if !field.is_empty() {
                case = case.message_has(field);
            }
            cases.push(case);
        }
    }
    // A merchant's reads are its own: merchant B's list holds none of A's vouchers.
    cases.push(case("control", "merchant B's list", &Meta::of("merchant B", &w.b), vouchers("", "", 0, ""), Code::Ok).answer_has("vouchers: []"));
    cases.push(case("control", "merchant A's list", &a, vouchers("undelivered", "", 0, ""), Code::Ok).answer_has(w.sale.voucher_id.clone()));
    // Likewise its orders: B's list holds none of A's (control: A's holds it).
    cases.push(case("control", "merchant B's orders", &Meta::of("merchant B", &w.b), orders(0, ""), Code::Ok).answer_has("orders: []"));
    cases.push(case("control", "merchant A's orders", &a, orders(0, ""), Code::Ok).answer_has(w.order.clone()));
    cases
}
