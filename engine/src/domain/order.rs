//! Licensed duplication orders (the mastering seeds): an order reserves N units of one
//! media; each unit is later bound to one device or medium identity (the "media ID"), the
//! media key is wrapped for that device, and completion is reported. A unit is paid as it
//! binds, before its key leaves: `UnitBound` carries its charge (the merchant's clearing
//! account pays the media's price, split by the terms recorded at placing), which is the
//! ledger's sale and the royalty log's usage.

use super::catalog::Media;
use super::event::{Event, LedgerAccountKind, RoyaltyTerms, UnitCharge};
use super::settlement::{Payer, SaleLine, settle};
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{MediaId, MerchantId, Millis, OrderId};
use std::collections::{BTreeMap, BTreeSet};

/// Most units one order may hold.
pub const UNITS_MAX: u32 = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Order {
    pub id: Option<OrderId>,
    pub merchant: Option<MerchantId>,
    pub media_id: Option<MediaId>,
    pub units: u32,
    pub price_per_unit_minor: u64,
    /// The currency and terms each unit settles by (`None`: placed before units were paid).
    pub settles_by: Option<(String, RoyaltyTerms)>,
    /// unit -> device id
    pub bound: BTreeMap<u32, String>,
    /// unit -> blake3 of the device key its media key is wrapped for (a unit binds once,
    /// to one key).
    pub bound_keys: BTreeMap<u32, [u8; 32]>,
    pub completed: BTreeSet<u32>,
}

// Commands live for one decision; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum OrderCommand {
    Place { order: OrderId, merchant: MerchantId, media_id: MediaId, media: Media, units: u32 },
    BindUnit { merchant: MerchantId, unit: u32, device_id: String, device_public_key_hash: [u8; 32], merchant_active: bool },
    CompleteUnit { merchant: MerchantId, unit: u32 },
}

impl Order {
    /// What binding one unit costs `merchant`: the price recorded at placing, settled from
    /// its clearing account by the terms recorded then.
    fn unit_charge(&self, merchant: &MerchantId) -> Result<UnitCharge, Rejection> {
        let (currency, terms) = self.settles_by.as_ref().ok_or(Rejection::InvalidTransition { kind: "order", command: "BindUnit", state: "Unpaid" })?;
        let media_id = self.media_id.clone().ok_or(Rejection::NotFound { kind: "order", id: String::new() })?;
        let payer = Payer { kind: LedgerAccountKind::MerchantClearing, account: merchant.0.clone() };
        let postings = settle(&payer, &merchant.0, &[SaleLine { price_minor: self.price_per_unit_minor, terms }]);
        Ok(UnitCharge { merchant: merchant.clone(), media_id, price_minor: self.price_per_unit_minor, currency: currency.clone(), postings })
    }

    fn owned_unit(&self, merchant: &MerchantId, unit: u32) -> Result<(), Rejection> {
        if self.id.is_none() {
            return Err(Rejection::NotFound { kind: "order", id: String::new() });
        }
        // Another merchant's order answers exactly as an unknown one (no existence oracle).
        if self.merchant.as_ref() != Some(merchant) {
            return Err(Rejection::NotFound { kind: "order", id: String::new() });
        }
        if unit >= self.units {
            return Err(Rejection::InvalidArgument { field: "unit", reason: format!("the order has units 0..{}", self.units) });
        }
        Ok(())
    }
}

impl Aggregate for Order {
    type Command = OrderCommand;
    const KIND: AggregateKind = AggregateKind::Order;

    fn decide(&self, command: &OrderCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            OrderCommand::Place { order, merchant, media_id, media, units } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { kind: "order", id: order.0.clone() });
                }
                if media.published.is_none() {
                    return Err(Rejection::NotFound { kind: "media", id: media_id.0.clone() });
                }
                if !media.on_sale() {
                    return Err(Rejection::NotForSale(media_id.0.clone()));
                }
                if *units == 0 || *units > UNITS_MAX {
                    return Err(Rejection::InvalidArgument { field: "units", reason: format!("must be 1..={UNITS_MAX}") });
                }
                let settles_by = media.published.as_ref().map(|published| (published.currency.clone(), published.terms.clone()));
                Ok(vec![Event::OrderPlaced {
                    order_id: order.clone(),
                    merchant_id: merchant.clone(),
                    media_id: media_id.clone(),
                    units: *units,
                    price_per_unit_minor: media.price_minor,
                    settles_by,
                }])
            }
            OrderCommand::BindUnit { merchant, unit, device_id, device_public_key_hash, merchant_active } => {
                self.owned_unit(merchant, *unit)?;
                if !merchant_active {
                    return Err(Rejection::MerchantSuspended);
                }
                validate::id("device_id", device_id)?;
                // A unit binds once, to one device and one key: binding it again is in
                // effect only for that same pair, so no second key ever gets the media key.
                match (self.bound.get(unit), self.bound_keys.get(unit)) {
                    (Some(existing), Some(key)) if existing == device_id && key == device_public_key_hash => Ok(vec![]),
                    (Some(_), _) => Err(Rejection::AlreadyExists { kind: "unit binding", id: unit.to_string() }),
                    (None, _) => Ok(vec![Event::UnitBound {
                        order_id: self.id.clone().unwrap_or_else(|| OrderId::new("")),
                        unit: *unit,
                        device_id: device_id.clone(),
                        device_public_key_hash: *device_public_key_hash,
                        wrapped_key_hash: None,
                        charge: Some(self.unit_charge(merchant)?),
                    }]),
                }
            }
            OrderCommand::CompleteUnit { merchant, unit } => {
                self.owned_unit(merchant, *unit)?;
                if !self.bound.contains_key(unit) {
                    return Err(Rejection::InvalidTransition { kind: "unit", command: "CompleteUnit", state: "Unbound" });
                }
                if self.completed.contains(unit) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::UnitCompleted { order_id: self.id.clone().unwrap_or_else(|| OrderId::new("")), unit: *unit }])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::OrderPlaced { order_id, merchant_id, media_id, units, price_per_unit_minor, settles_by } => {
                self.id = Some(order_id.clone());
                self.merchant = Some(merchant_id.clone());
                self.media_id = Some(media_id.clone());
                self.units = *units;
                self.price_per_unit_minor = *price_per_unit_minor;
                self.settles_by = settles_by.clone();
            }
            Event::UnitBound { unit, device_id, device_public_key_hash, .. } => {
                self.bound.insert(*unit, device_id.clone());
                self.bound_keys.insert(*unit, *device_public_key_hash);
            }
            Event::UnitCompleted { unit, .. } => {
                self.completed.insert(*unit);
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &OrderCommand) -> &'static str {
        match command {
            OrderCommand::Place { .. } => "PlaceOrder",
            OrderCommand::BindUnit { .. } => "BindUnit",
            OrderCommand::CompleteUnit { .. } => "CompleteUnit",
        }
    }
}
