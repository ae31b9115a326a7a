//! The DSR checked record by record against the Basic Audio Profile 1.2's field lists,
//! written here from the profile's schema (ddexnet/dsrf
//! `schemas/BasicAudioProfile/1.2/BasicAudioProfile.xsd`, the Multi-Record Block variant) and
//! DSR Part 8: every cell in order, mandatory cells filled, each typed cell of its type; the
//! record order of the profile; the footer's counts; summaries per currency that net their
//! sales records and the entries of that currency. Controls: the validator refuses a record
//! with a cell missing, two cells swapped, a bad boolean, a summary summed across currencies.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Fixed(&'static str),
    Text,
    Integer,
    Decimal,
    Boolean,
    Date,
    DateTime,
    Dpid,
    Isrc,
    Icpn,
    PartyId,
    Duration,
    Currency,
    OneOf(&'static [&'static str]),
}

use Kind::*;

/// (cell name, mandatory, kind) per record type, in the schema's order.
fn fields(record: &str) -> Option<Vec<(&'static str, bool, Kind)>> {
    Some(match record {
        "HEAD" => vec![
            ("RecordType", true, Fixed("HEAD")),
            ("MessageVersion", true, Text),
            ("Profile", true, OneOf(&["BasicAudioProfile"])),
            ("ProfileVersion", true, Fixed("1.2")),
            ("MessageId", true, Text),
            ("MessageCreatedDateTime", true, DateTime),
            ("FileNumber", true, Integer),
            ("NumberOfFiles", true, Integer),
            ("UsageStartDate", true, Date),
            ("UsageEndDate", true, Date),
            ("SenderPartyId", true, Dpid),
            ("SenderName", true, Text),
            ("ServiceDescription", false, Text),
            ("RecipientPartyId", false, Dpid),
            ("RecipientName", false, Text),
            ("RepresentedRepertoire", false, Text),
        ],
        "SY01.01" => vec![
            ("RecordType", true, Fixed("SY01.01")),
            ("SummaryRecordId", true, Text),
            ("DistributionChannel", false, Text),
            ("DistributionChannelDPID", false, Dpid),
            ("CommercialModel", true, OneOf(&["PayAsYouGoModel", "FreeOfChargeModel", "SubscriptionModel", "AdvertisementSupportedModel"])),
            ("UseType", true, OneOf(&["PermanentDownload", "OnDemandStream", "Stream", "Download"])),
            ("Territory", true, OneOf(&["Worldwide"])),
            ("ServiceDescription", false, Text),
            ("Usages", true, Integer),
            ("Subscribers", false, Decimal),
            ("CurrencyOfReporting", true, Currency),
            ("NetRevenue", true, Decimal),
            ("IndirectNetRevenue", false, Decimal),
            ("CurrencyOfTransaction", false, Currency),
            ("ExchangeRate", false, Decimal),
        ],
        "RE01" => vec![
            ("RecordType", true, Fixed("RE01")),
            ("BlockId", true, Text),
            ("ReleaseReference", true, Text),
            ("DspReleaseId", true, Text),
            ("ProprietaryReleaseId", false, PartyId),
            ("CatalogNumber", false, Text),
            ("ICPN", false, Icpn),
            ("DisplayArtistName", true, Text),
            ("DisplayArtistPartyId", false, PartyId),
            ("Title", true, Text),
            ("SubTitle", false, Text),
            ("ReleaseType", false, Text),
            ("Label", false, Text),
            ("PLine", false, Text),
            ("DataProvider", false, Text),
        ],
        "AS01.01" => vec![
            ("RecordType", true, Fixed("AS01.01")),
            ("BlockId", true, Text),
            ("ResourceReference", true, Text),
            ("DspResourceId", true, Text),
            ("ISRC", false, Isrc),
            ("Title", true, Text),
            ("SubTitle", false, Text),
            ("DisplayArtistName", true, Text),
            ("DisplayArtistPartyId", false, PartyId),
            ("Duration", false, Duration),
            ("ResourceType", true, OneOf(&["SoundRecording", "MusicalWorkSoundRecording", "Video"])),
            ("IsMasterRecording", false, Boolean),
        ],
        "SU01" => vec![
            ("RecordType", true, Fixed("SU01")),
            ("BlockId", true, Text),
            ("SummaryRecordId", true, Text),
            ("SalesTransactionId", true, Text),
            ("TransactedRelease", false, Text),
            ("TransactedResource", false, Text),
            ("IsRoyaltyBearing", true, Boolean),
            ("SalesUpgrade", true, Boolean),
            ("Usages", true, Integer),
            ("Returns", true, Integer),
            ("PriceConsumerPaidExcSalesTax", false, Decimal),
            ("PromotionalActivity", false, Text),
        ],
        "SU02" => vec![
            ("RecordType", true, Fixed("SU02")),
            ("BlockId", true, Text),
            ("SummaryRecordId", true, Text),
            ("SalesTransactionId", true, Text),
            ("TransactedRelease", false, Text),
            ("TransactedResource", false, Text),
            ("IsRoyaltyBearing", false, Boolean),
            ("NumberOfStreams", true, Integer),
            ("PriceConsumerPaidExcSalesTax", false, Decimal),
            ("PromotionalActivity", false, Text),
        ],
        "FOOT" => vec![
            ("RecordType", true, Fixed("FOOT")),
            ("NumberOfLinesInFile", true, Integer),
            ("NumberOfLinesInReport", false, Integer),
            ("NumberOfSummaryRecords", true, Integer),
            ("NumberOfBlocksInFile", true, Integer),
            ("NumberOfBlocksInReport", false, Integer),
        ],
        _ => return None,
    })
}

fn digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn fits(kind: Kind, cell: &str) -> bool {
    let date = |text: &str| text.len() == 10 && digits(&text[..4]) && &text[4..5] == "-" && digits(&text[5..7]) && &text[7..8] == "-" && digits(&text[8..]);
    match kind {
        Fixed(value) => cell == value,
        Text => !cell.contains('\t'),
        Integer => digits(cell.strip_prefix('-').unwrap_or(cell)),
        Decimal => {
            let unsigned = cell.strip_prefix('-').unwrap_or(cell);
            let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
            digits(whole) && digits(fraction)
        }
        Boolean => cell == "true" || cell == "false",
        Date => date(cell),
        DateTime => cell.len() == 20 && date(&cell[..10]) && &cell[10..11] == "T" && cell.ends_with('Z'),
        Dpid => cell.strip_prefix("PADPIDA").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())),
        Isrc => {
            cell.len() == 12
                && cell[..2].bytes().all(|b| b.is_ascii_alphabetic())
                && cell[2..5].bytes().all(|b| b.is_ascii_alphanumeric())
                && digits(&cell[5..])
        }
        Icpn => (12..=14).contains(&cell.len()) && digits(cell),
        PartyId => cell.contains("::"),
        Duration => cell.starts_with("PT") && cell.ends_with('S'),
        Currency => cell.len() == 3 && cell.bytes().all(|b| b.is_ascii_uppercase()),
        OneOf(values) => values.contains(&cell),
    }
}

/// Every check of the profile on a DSR file; `Err` names the first line that breaks one.
fn validate(text: &str) -> Result<(), String> {
    let lines: Vec<Vec<&str>> = text.lines().map(|line| line.split('\t').collect()).collect();
    let mut summaries: BTreeMap<String, (String, i128, i128)> = BTreeMap::new(); // id -> (currency, usages, net)
    let mut from_sales: BTreeMap<String, (i128, i128)> = BTreeMap::new(); // id -> (usages, net minor)
    let mut blocks = BTreeSet::new();
    let mut stage = 0; // 0 HEAD, 1 summaries, 2 blocks, 3 FOOT
    let mut block = String::new();
    for (number, cells) in lines.iter().enumerate() {
        let at = |reason: String| format!("line {}: {reason}", number + 1);
        let record = cells[0];
        let fields = fields(record).ok_or_else(|| at(format!("unknown record type {record}")))?;
        if cells.len() != fields.len() {
            return Err(at(format!("{record} has {} cells, the profile {}", cells.len(), fields.len())));
        }
        for ((name, mandatory, kind), cell) in fields.iter().zip(cells) {
            if cell.is_empty() {
                if *mandatory {
                    return Err(at(format!("{record}.{name} is mandatory")));
                }
            } else if !fits(*kind, cell) {
                return Err(at(format!("{record}.{name} {cell:?} is not a {kind:?}")));
            }
        }
        let next = match record {
            "HEAD" => 0,
            "SY01.01" => 1,
            "FOOT" => 3,
            _ => 2,
        };
        if next < stage || (next == 0 && number > 0) || (number == 0 && next != 0) || (next == 2 && stage < 1) {
            return Err(at(format!("{record} out of the profile's order")));
        }
        stage = next;
        match record {
            "SY01.01" => {
                let currency = cells[10].to_string();
                let net = minor_units(cells[11], &currency).ok_or_else(|| at("NetRevenue in the currency's units".into()))?;
                summaries.insert(cells[1].to_string(), (currency, cells[8].parse().expect("integer"), net));
            }
            "RE01" => {
                if !blocks.insert(cells[1].to_string()) {
                    return Err(at("a block opened twice".into()));
                }
                block = cells[1].to_string();
            }
            "AS01.01" | "SU01" | "SU02" if cells[1] != block => return Err(at("a record outside its block".into())),
            "SU01" => {
                let (currency, _, _) = summaries.get(cells[2]).ok_or_else(|| at("an unknown SummaryRecordId".into()))?;
                let price = minor_units(cells[10], currency).ok_or_else(|| at("a price in the summary's currency".into()))?;
                let (usages, returns): (i128, i128) = (cells[8].parse().expect("integer"), cells[9].parse().expect("integer"));
                let sums = from_sales.entry(cells[2].to_string()).or_default();
                sums.0 += usages - returns;
                sums.1 += (usages - returns) * price;
            }
            "SU02" => {
                summaries.get(cells[2]).ok_or_else(|| at("an unknown SummaryRecordId".into()))?;
                from_sales.entry(cells[2].to_string()).or_default().0 += cells[7].parse::<i128>().expect("integer");
            }
            "FOOT" => {
                let expected =
                    [lines.len().to_string(), lines.len().to_string(), summaries.len().to_string(), blocks.len().to_string(), blocks.len().to_string()];
                if cells[1..] != expected.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                    return Err(at(format!("the footer counts {:?}, the file {expected:?}", &cells[1..])));
                }
            }
            _ => {}
        }
    }
    if stage != 3 || lines.last().map(|cells| cells[0]) != Some("FOOT") {
        return Err("the file does not end with FOOT".into());
    }
    for (id, (_, usages, net)) in &summaries {
        let (sold, sold_net) = from_sales.get(id).copied().unwrap_or_default();
        if (sold, sold_net) != (*usages, *net) && !(sold == *usages && *net == 0) {
            return Err(format!("summary {id}: {usages} usages, net {net}; its records {sold}, net {sold_net}"));
        }
    }
    Ok(())
}

fn entry(kind: UsageKind, media: &str, merchant: &str, currency: &str, price: u64, day: i64) -> Entry {
    Entry {
        kind,
        source_seq: 1,
        timestamp_ms: 1_767_225_600_000 + day * 86_400_000,
        title: format!("Song {media} | =SUM(A1)"),
        artist: "Artist \\ B".into(),
        authors: vec![],
        length_ms: 187_000,
        sale_price_minor: price,
        currency: currency.into(),
        consumer_cert: String::new(),
        voucher_id: "v".into(),
        media_id: media.into(),
        image_descriptor: String::new(),
        merchant: merchant.into(),
        rights_agent: "agent".into(),
        distributor: "d".into(),
        owner: "o".into(),
        played_ms: 0,
    }
}

fn sample() -> Vec<Entry> {
    use UsageKind::*;
    vec![
        entry(Delivery, "md1", "m1", "EUR", 199, 0),
        entry(Delivery, "md1", "m1", "EUR", 199, 1),
        entry(Refund, "md1", "m1", "EUR", 199, 2),
        entry(Delivery, "md1", "m2", "JPY", 250, 3),
        entry(Chargeback, "md1", "m2", "JPY", 250, 40),
        entry(Delivery, "md1", "m2", "JPY", 300, 41),
        entry(Preview, "md2", "m1", "EUR", 0, 5),
        entry(Duplication, "md2", "m1", "EUR", 150, 6),
        entry(Delivery, "md2", "m1", "EUR", 120, 7),
    ]
}

#[test]
fn every_record_follows_the_basic_audio_profile() {
    let parties = DsrParties { recipient_dpid: Some("PADPIDA2013020802I".into()), ..DsrParties::default() };
    let file = dsr(&sample(), &parties, "abc123", 1_767_225_600_000 + 50 * 86_400_000 + 3_723_000);
    validate(&file.text).unwrap_or_else(|reason| panic!("{reason}\n{}", file.text));
    assert_eq!(file.name, "DSR_PADPIDA2013020802I_PADPIDAUNREGISTERED_Downloads_2026-01-01--2026-02-28_Worldwide_1of1_20260220T010203.tsv");

    // One summary per (merchant, currency, model): the EUR sales net 199+199-199+150+120, the
    // JPY ones 250-250+300, each in its own currency; refunds and chargebacks are returns.
    let summaries: Vec<Vec<&str>> = file.text.lines().filter(|line| line.starts_with("SY01.01\t")).map(|line| line.split('\t').collect()).collect();
    let nets: Vec<(&str, &str, &str, &str)> = summaries.iter().map(|cells| (cells[2], cells[10], cells[11], cells[8])).collect();
    assert_eq!(nets, [("m1", "EUR", "4.69", "3"), ("m2", "JPY", "300", "1"), ("m1", "EUR", "0.00", "1")]);
    let returns: u64 = file
        .text
        .lines()
        .filter(|line| line.starts_with("SU01\t"))
        .map(|line| line.split('\t').nth(9).expect("Returns").parse::<u64>().expect("integer"))
        .sum();
    assert_eq!(returns, 2, "the refund and the chargeback");
    // Text cells: the pipe and the backslash escaped, the formula neutralised.
    assert!(file.text.contains("\tSong md1 \\| =SUM(A1)\t") && file.text.contains("\tArtist \\\\ B\t"), "{}", file.text);
    assert!(!file.text.lines().flat_map(|line| line.split('\t')).any(|cell| cell.starts_with('=')));
}

#[test]
fn the_validator_refuses_what_the_profile_does_not_allow() {
    let file = dsr(&sample(), &DsrParties::default(), "abc123", 1_767_225_600_000);
    validate(&file.text).expect("the genuine file");
    let replace_line = |prefix: &str, edit: &dyn Fn(&mut Vec<String>)| -> String {
        let mut done = false;
        let lines: Vec<String> = file
            .text
            .lines()
            .map(|line| {
                if !done && line.starts_with(prefix) {
                    done = true;
                    let mut cells: Vec<String> = line.split('\t').map(str::to_string).collect();
                    edit(&mut cells);
                    cells.join("\t")
                } else {
                    line.to_string()
                }
            })
            .collect();
        lines.join("\n") + "\n"
    };
    let missing = replace_line("SU01\t", &|cells| {
        cells.pop();
    });
    assert!(validate(&missing).expect_err("a cell missing").contains("cells"));
    let swapped = replace_line("AS01.01\t", &|cells| cells.swap(5, 10));
    assert!(validate(&swapped).is_err(), "Title and ResourceType swapped");
    let bad_boolean = replace_line("SU01\t", &|cells| cells[6] = "Y".into());
    assert!(validate(&bad_boolean).expect_err("a bad boolean").contains("IsRoyaltyBearing"));
    let summed = replace_line("SY01.01\t", &|cells| cells[11] = "7.69".into());
    assert!(validate(&summed).expect_err("a summary that does not net its records").contains("summary"));
    let no_foot: String = file.text.lines().filter(|line| !line.starts_with("FOOT")).map(|line| format!("{line}\n")).collect();
    assert!(validate(&no_foot).is_err());
    assert_eq!(minor_units("-12.50", "EUR"), Some(-1250));
    assert_eq!((decimal(-1250, "EUR"), decimal(300, "JPY"), decimal(1, "KWD")), ("-12.50".to_string(), "300".to_string(), "0.001".to_string()));
    assert!(parse_dpid("PADPIDA2013020802I").is_ok() && parse_dpid("PADPIDA").is_err() && parse_dpid("DPID1").is_err());
}
