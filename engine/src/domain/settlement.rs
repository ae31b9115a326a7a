//! Double-entry settlement of an authorized sale (the DMOD seed): the price moves from the
//! payer (the consumer's points account, or the merchant's clearing account when the
//! merchant took the payment) to the retailer, distributor and rights owner per each
//! media's terms. Debits always equal credits; rounding remainders go to the owner so no
//! minor unit is created or lost.

use super::event::{LedgerAccountKind, Posting, RoyaltyTerms};

/// Who pays: the account debited with the full price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payer {
    pub kind: LedgerAccountKind,
    pub account: String,
}

/// One sold item: its price and the terms that split it.
#[derive(Clone, Debug)]
pub struct SaleLine<'a> {
    pub price_minor: u64,
    pub terms: &'a RoyaltyTerms,
}

/// The postings of a sale. `retailer` is the selling merchant.
pub fn settle(payer: &Payer, retailer: &str, lines: &[SaleLine<'_>]) -> Vec<Posting> {
    let total: u64 = lines.iter().map(|line| line.price_minor).sum();
    let mut postings = vec![Posting { kind: payer.kind, account: payer.account.clone(), debit_minor: total, credit_minor: 0 }];
    for line in lines {
        let share = |bps: u32| -> u64 {
            // u128 so that price * bps cannot overflow; the result is <= price.
            u64::try_from(u128::from(line.price_minor) * u128::from(bps) / 10_000).unwrap_or(line.price_minor)
        };
        let retailer_minor = share(line.terms.retailer_bps);
        let distributor_minor = share(line.terms.distributor_bps);
        let owner_minor = line.price_minor - retailer_minor - distributor_minor;
        for (kind, account, amount) in [
            (LedgerAccountKind::Retailer, retailer, retailer_minor),
            (LedgerAccountKind::Distributor, line.terms.distributor.as_str(), distributor_minor),
            (LedgerAccountKind::Owner, line.terms.owner.as_str(), owner_minor),
        ] {
            if amount > 0 {
                postings.push(Posting { kind, account: account.to_string(), debit_minor: 0, credit_minor: amount });
            }
        }
    }
    postings
}

/// Whether a set of postings balances (sum of debits == sum of credits), in u128.
pub fn balanced(postings: &[Posting]) -> bool {
    let debits: u128 = postings.iter().map(|p| u128::from(p.debit_minor)).sum();
    let credits: u128 = postings.iter().map(|p| u128::from(p.credit_minor)).sum();
    debits == credits
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms(retailer_bps: u32, distributor_bps: u32) -> RoyaltyTerms {
        RoyaltyTerms {
            retailer_bps,
            distributor_bps,
            owner_bps: 10_000 - retailer_bps - distributor_bps,
            distributor: "dist".into(),
            owner: "owner".into(),
            rights_agent: "agent".into(),
        }
    }

    #[test]
    fn splits_per_terms() {
        let payer = Payer { kind: LedgerAccountKind::MerchantClearing, account: "m1".into() };
        let t = terms(3000, 2000);
        let postings = settle(&payer, "m1", &[SaleLine { price_minor: 199, terms: &t }]);
        assert_eq!(postings[0].debit_minor, 199);
        // 199 * 0.3 = 59.7 -> 59, 199 * 0.2 = 39.8 -> 39, owner gets the remainder 101.
        let credits: Vec<u64> = postings[1..].iter().map(|p| p.credit_minor).collect();
        assert_eq!(credits, vec![59, 39, 101]);
        assert!(balanced(&postings));
    }

    #[test]
    fn negative_control_unbalanced_is_detected() {
        let payer = Payer { kind: LedgerAccountKind::ConsumerPoints, account: "a1".into() };
        let t = terms(3000, 2000);
        let mut postings = settle(&payer, "m1", &[SaleLine { price_minor: 100, terms: &t }]);
        postings[1].credit_minor += 1;
        assert!(!balanced(&postings));
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(crate::testing::proptest_seed(module_path!())), ..ProptestConfig::default() })]

        #[test]
        fn debits_always_equal_credits(prices in proptest::collection::vec(1u64..1_000_000_000_000, 1..8), r in 0u32..=10_000, d in 0u32..=10_000) {
            prop_assume!(r + d <= 10_000);
            let t = terms(r, d);
            let lines: Vec<SaleLine<'_>> = prices.iter().map(|&price_minor| SaleLine { price_minor, terms: &t }).collect();
            let payer = Payer { kind: LedgerAccountKind::MerchantClearing, account: "m".into() };
            let postings = settle(&payer, "m", &lines);
            prop_assert!(balanced(&postings));
            prop_assert!(postings.iter().all(|p| (p.debit_minor == 0) != (p.credit_minor == 0)));
        }
    }
}
