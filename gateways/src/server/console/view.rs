//! The console's HTML: the page layout with the navigation a role may use, figures and
//! tables (each figure carries `data-figure`, each table row `data-row` and its cells
//! `data-col`, which the browser test reads), SVG bar charts drawn on the server, and the
//! time and amount formats. maud escapes every interpolated value, so text from the
//! stream (titles, names) stays text. No script: the overview and nodes pages refresh
//! with a meta tag.
//! Not here: what a page shows (`pages`), who may see it (`super::Page::allowed`).

use super::Page;
use crate::server::front_door::Identity;
use maud::{DOCTYPE, Markup, html};
use proto::v1 as pb;

/// Seconds between refreshes of the pages that carry live figures.
pub const REFRESH_S: u32 = 10;
/// Bars a chart draws at most (the largest).
pub const CHART_BARS_MAX: usize = 20;
/// Characters of a label a chart shows.
const CHART_LABEL_CHARS_MAX: usize = 28;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}\
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}\
header a{color:#cfe0ff;text-decoration:none}header a.on{color:#fff;font-weight:600;border-bottom:2px solid #7fb0ff}\
header .who{margin-left:auto;font-size:13px;color:#aab}header form{display:inline}\
header button{background:none;border:1px solid #667;color:#ddd;border-radius:4px;cursor:pointer}\
main{padding:16px 24px}h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:22px 0 8px}\
.figures{display:flex;flex-wrap:wrap;gap:10px}.figure{background:#fff;border:1px solid #dde;border-radius:6px;padding:10px 14px;min-width:130px}\
.figure span{display:block;font-size:12px;color:#667}.figure b{font-size:22px}\
table{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:8px}th,td{border:1px solid #dde;padding:4px 8px;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00020;font-weight:600}.ok{color:#0a7d32;font-weight:600}\
.note{color:#667;font-size:13px}form.inline input,form.inline select{margin-right:6px}\
.login{max-width:440px;margin:60px auto;background:#fff;border:1px solid #dde;border-radius:8px;padding:20px 26px}\
.login label{display:block;margin:10px 0 4px;font-size:13px}.login input[type=text],.login input[type=password]{width:100%;box-sizing:border-box}\
code{font-size:12px}";

/// A whole page: head, navigation for the signed-in role, and `body`.
pub fn layout(title: &str, identity: Option<&Identity>, current: Option<Page>, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content=(REFRESH_S); }
                title { (title) " · Vouchsafe console" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "Vouchsafe" }
                    @if let Some(identity) = identity {
                        @for page in Page::ALL.into_iter().filter(|page| page.allowed(identity)) {
                            a href=(page.path()) class=[(Some(page) == current).then_some("on")] { (page.title()) }
                        }
                        span.who { "signed in as " (identity.role()) " " code { (identity_id(identity)) } }
                        form method="post" action="/logout" { button type="submit" { "sign out" } }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn identity_id(identity: &Identity) -> &str {
    match identity {
        Identity::Operator(id) | Identity::Auditor(id) => id,
        Identity::Merchant(id) => &id.0,
        Identity::Node(id) => &id.0,
        Identity::Publisher(id) => &id.0,
    }
}

/// One labelled figure.
pub fn figure(name: &str, label: &str, value: impl std::fmt::Display) -> Markup {
    html! { div.figure { span { (label) } b data-figure=(name) { (value) } } }
}

/// "2026-11-01 12:34:56 UTC" of a Unix time in milliseconds; "unknown" for 0.
pub fn utc_text(ms: i64) -> String {
    if ms == 0 {
        return "unknown".into();
    }
    let seconds = ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days, as `royalty_log::month_of`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60)
}

/// The net of a totals line (gross minus what refunds took back).
pub fn net(line: &pb::TotalsLine) -> i128 {
    i128::from(line.amount_minor) - i128::from(line.refunded_minor)
}

/// A totals table; `prefix` keeps the row keys of several tables on one page apart.
pub fn totals_table(prefix: &str, key_title: &str, lines: &[&pb::TotalsLine]) -> Markup {
    html! {
        table data-table=(prefix) {
            tr { th { (key_title) } th { "deliveries" } th { "units" } th { "previews" } th { "gross (minor)" } th { "refunds" } th { "refunded (minor)" } th { "net (minor)" } }
            @for line in lines {
                tr data-row=(format!("{prefix}/{}", line.key)) {
                    td data-col="key" { (line.key) }
                    td.n data-col="deliveries" { (line.deliveries) }
                    td.n data-col="units" { (line.units) }
                    td.n data-col="previews" { (line.previews) }
                    td.n data-col="amount_minor" { (line.amount_minor) }
                    td.n data-col="refunds" { (line.refunds) }
                    td.n data-col="refunded_minor" { (line.refunded_minor) }
                    td.n data-col="net_minor" { (net(line)) }
                }
            }
        }
    }
}

/// A horizontal bar chart of `bars` (label, value), the largest `CHART_BARS_MAX`, drawn
/// as SVG on the server.
pub fn bar_chart(name: &str, title: &str, bars: &[(String, i128)]) -> Markup {
    let mut shown: Vec<&(String, i128)> = bars.iter().collect();
    shown.sort_by(|a, b| b.1.abs().cmp(&a.1.abs()).then_with(|| a.0.cmp(&b.0)));
    shown.truncate(CHART_BARS_MAX);
    let largest = shown.iter().map(|(_, value)| value.unsigned_abs()).max().unwrap_or(0).max(1);
    let (label_w, bar_w, row_h) = (200u32, 380u32, 22u32);
    let height = row_h * u32::try_from(shown.len()).unwrap_or(0) + 28;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" data-chart=(name) role="img" aria-label=(title) width=(label_w + bar_w + 110) height=(height) style="background:#fff;border:1px solid #dde;border-radius:6px;margin:4px 0 12px" {
            text x="8" y="18" font-size="13" font-weight="600" { (title) }
            @for (row, (label, value)) in shown.iter().enumerate() {
                @let y = 28 + row_h * u32::try_from(row).unwrap_or(0);
                @let width = u32::try_from(value.unsigned_abs() * u128::from(bar_w) / largest).unwrap_or(bar_w).max(1);
                text x=(label_w - 6) y=(y + 14) font-size="12" text-anchor="end" { (short(label)) }
                rect x=(label_w) y=(y + 3) width=(width) height=(row_h - 6) fill=(if *value < 0 { "#d9534f" } else { "#4a7fd4" }) data-bar=(label) data-value=(value) {}
                text x=(label_w + width + 6) y=(y + 14) font-size="12" { (value) }
            }
        }
    }
}

fn short(label: &str) -> String {
    if label.chars().count() <= CHART_LABEL_CHARS_MAX {
        return label.to_string();
    }
    let mut text: String = label.chars().take(CHART_LABEL_CHARS_MAX - 1).collect();
    text.push('…');
    text
}

/// A page saying why there is nothing to show (no figure on it).
pub fn message_page(title: &str, identity: Option<&Identity>, message: &str) -> Markup {
    layout(title, identity, None, false, html! { h1 { (title) } p data-message="" { (message) } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc_text(0), "unknown");
        assert_eq!(utc_text(1_773_532_800_000), "2026-03-15 00:00:00 UTC");
        assert_eq!(utc_text(951_827_696_789), "2000-02-29 12:34:56 UTC");
    }

    /// Text from the stream is escaped in tables and charts: a title cannot add markup.
    #[test]
    fn text_from_the_stream_stays_text() {
        let line = pb::TotalsLine { key: "<script>alert(1)</script>".into(), deliveries: 1, amount_minor: 5, ..Default::default() };
        let table = totals_table("artist", "artist", &[&line]).into_string();
        let chart = bar_chart("artist", "net", &[(line.key.clone(), 5)]).into_string();
        for markup in [table, chart] {
            assert!(!markup.contains("<script>") && markup.contains("&lt;script&gt;"), "{markup}");
        }
    }

    #[test]
    fn a_chart_draws_the_largest_bars_scaled() {
        let bars: Vec<(String, i128)> = (0..30).map(|i| (format!("k{i}"), i128::from(i) * 10)).collect();
        let chart = bar_chart("c", "t", &bars).into_string();
        assert_eq!(chart.matches("<rect").count(), CHART_BARS_MAX);
        assert!(chart.contains("data-bar=\"k29\"") && !chart.contains("data-bar=\"k0\""), "the largest are drawn");
        assert!(chart.contains("width=\"380\""), "the largest bar spans the chart");
    }
}
