//! Merchants, auditors, delivery nodes and consumers: who may act, with which credential
//! hash or certificate. Secrets never appear here: merchants, auditors and nodes are known by
//! the hash of their credential secret, consumers by certificate serial and public key.
//! What an auditor may read is the gateway's business, not this module's: the auditor
//! aggregate only records who holds a credential and whether it still counts.

use super::event::Event;
use super::{Aggregate, AggregateKind, Rejection, validate};
use crate::ids::{AuditorId, CertSerial, ConsumerId, MerchantId, Millis, NodeId};
use std::collections::BTreeMap;

/// Most streams one node may serve at once.
pub const SLOTS_MAX: u32 = 100_000;
/// Most certificates one consumer may hold.
pub const CERTS_PER_CONSUMER_MAX: usize = 64;
/// Longest certificate validity.
pub const CERT_VALIDITY_MS_MAX: u64 = 5 * 366 * 24 * 3600 * 1000;

// ---- merchant ----

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MerchantStatus {
    #[default]
    Unknown,
    Active,
    Suspended,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merchant {
    pub status: MerchantStatus,
    pub id: Option<MerchantId>,
    pub name: String,
    pub credential_hash: [u8; 32],
    /// The rental windows this merchant offers (min, max), within the operator's; `None`:
    /// the operator's bounds.
    pub rental_window_ms: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
pub enum MerchantCommand {
    Register {
        merchant: MerchantId,
        name: String,
        credential_hash: [u8; 32],
    },
    Suspend {
        reason: String,
    },
    /// Lifts a suspension: the merchant may sell again.
    Reinstate {
        reason: String,
    },
    /// The rental windows this merchant offers (0..0: the operator's bounds).
    SetRentalWindow {
        window_ms_min: u64,
        window_ms_max: u64,
    },
}

impl Aggregate for Merchant {
    type Command = MerchantCommand;
    const KIND: AggregateKind = AggregateKind::Merchant;

    fn decide(&self, command: &MerchantCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            MerchantCommand::Register { merchant, name, credential_hash } => {
                if self.status != MerchantStatus::Unknown {
                    return Err(Rejection::AlreadyExists { kind: "merchant", id: merchant.0.clone() });
                }
                validate::id("merchant_id", &merchant.0)?;
                validate::text("name", name, 256)?;
                Ok(vec![Event::MerchantRegistered { merchant_id: merchant.clone(), name: name.clone(), credential_hash: *credential_hash }])
            }
            MerchantCommand::Suspend { reason } => match self.status {
                MerchantStatus::Unknown => Err(Rejection::NotFound { kind: "merchant", id: String::new() }),
                MerchantStatus::Suspended => Ok(vec![]),
                MerchantStatus::Active => {
                    validate::text("reason", reason, 256)?;
                    Ok(vec![Event::MerchantSuspended { merchant_id: self.id.clone().unwrap_or_else(|| MerchantId::new("")), reason: reason.clone() }])
                }
            },
            // As a second suspension does, reinstating an active merchant changes nothing.
            MerchantCommand::Reinstate { reason } => match self.status {
                MerchantStatus::Unknown => Err(Rejection::NotFound { kind: "merchant", id: String::new() }),
                MerchantStatus::Active => Ok(vec![]),
                MerchantStatus::Suspended => {
                    validate::text("reason", reason, 256)?;
                    Ok(vec![Event::MerchantReinstated { merchant_id: self.id.clone().unwrap_or_else(|| MerchantId::new("")), reason: reason.clone() }])
                }
            },
            MerchantCommand::SetRentalWindow { window_ms_min, window_ms_max } => {
                use crate::domain::config::{RENTAL_WINDOW_MS_FLOOR, RENTAL_WINDOW_MS_LIMIT};
                if self.status == MerchantStatus::Unknown {
                    return Err(Rejection::NotFound { kind: "merchant", id: String::new() });
                }
                let window = (*window_ms_min, *window_ms_max);
                if window != (0, 0) && !(RENTAL_WINDOW_MS_FLOOR..=RENTAL_WINDOW_MS_LIMIT).contains(window_ms_min) {
                    return Err(Rejection::InvalidArgument {
                        field: "window_ms_min",
                        reason: "a rental window is 1000 ms to 30 days (0 and 0: the operator's bounds)".into(),
                    });
                }
                if window_ms_max < window_ms_min || *window_ms_max > RENTAL_WINDOW_MS_LIMIT {
                    return Err(Rejection::InvalidArgument { field: "window_ms_max", reason: "must be at least window_ms_min and at most 30 days".into() });
                }
                if self.rental_window_ms.unwrap_or((0, 0)) == window {
                    return Ok(vec![]);
                }
                let merchant_id = self.id.clone().unwrap_or_else(|| MerchantId::new(""));
                Ok(vec![Event::MerchantRentalWindowSet { merchant_id, window_ms_min: *window_ms_min, window_ms_max: *window_ms_max }])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::MerchantRegistered { merchant_id, name, credential_hash } => {
                self.status = MerchantStatus::Active;
                self.id = Some(merchant_id.clone());
                self.name = name.clone();
                self.credential_hash = *credential_hash;
            }
            Event::MerchantSuspended { .. } => self.status = MerchantStatus::Suspended,
            Event::MerchantReinstated { .. } => self.status = MerchantStatus::Active,
            Event::MerchantRentalWindowSet { window_ms_min, window_ms_max, .. } => {
                self.rental_window_ms = Some((*window_ms_min, *window_ms_max)).filter(|window| *window != (0, 0));
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &MerchantCommand) -> &'static str {
        match command {
            MerchantCommand::Register { .. } => "RegisterMerchant",
            MerchantCommand::Suspend { .. } => "SuspendMerchant",
            MerchantCommand::Reinstate { .. } => "ReinstateMerchant",
            MerchantCommand::SetRentalWindow { .. } => "SetRentalWindow",
        }
    }
}

// ---- auditor ----

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuditorStatus {
    #[default]
    Unknown,
    Active,
    Revoked,
}

/// An auditor (a rights agent, the licensing center) with a read-only credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auditor {
    pub status: AuditorStatus,
    pub id: Option<AuditorId>,
    pub name: String,
    pub credential_hash: [u8; 32],
}

#[derive(Clone, Debug)]
pub enum AuditorCommand {
    Register { auditor: AuditorId, name: String, credential_hash: [u8; 32] },
    Revoke { reason: String },
}

impl Aggregate for Auditor {
    type Command = AuditorCommand;
    const KIND: AggregateKind = AggregateKind::Auditor;

    fn decide(&self, command: &AuditorCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            AuditorCommand::Register { auditor, name, credential_hash } => {
                if self.status != AuditorStatus::Unknown {
                    return Err(Rejection::AlreadyExists { kind: "auditor", id: auditor.0.clone() });
                }
                validate::id("auditor_id", &auditor.0)?;
                validate::text("name", name, 256)?;
                Ok(vec![Event::AuditorRegistered { auditor_id: auditor.clone(), name: name.clone(), credential_hash: *credential_hash }])
            }
            AuditorCommand::Revoke { reason } => match self.status {
                AuditorStatus::Unknown => Err(Rejection::NotFound { kind: "auditor", id: String::new() }),
                AuditorStatus::Revoked => Ok(vec![]),
                AuditorStatus::Active => {
                    validate::text("reason", reason, 256)?;
                    Ok(vec![Event::AuditorRevoked { auditor_id: self.id.clone().unwrap_or_else(|| AuditorId::new("")), reason: reason.clone() }])
                }
            },
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::AuditorRegistered { auditor_id, name, credential_hash } => {
                self.status = AuditorStatus::Active;
                self.id = Some(auditor_id.clone());
                self.name = name.clone();
                self.credential_hash = *credential_hash;
            }
            Event::AuditorRevoked { .. } => self.status = AuditorStatus::Revoked,
            _ => {}
        }
        self
    }

    fn command_name(command: &AuditorCommand) -> &'static str {
        match command {
            AuditorCommand::Register { .. } => "RegisterAuditor",
            AuditorCommand::Revoke { .. } => "RevokeAuditor",
        }
    }
}

// ---- delivery node ----

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeStatus {
    #[default]
    Unknown,
    Active,
    Drained,
    Removed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub status: NodeStatus,
    pub id: Option<NodeId>,
    /// The region the operator registered the node in (the node cannot change it).
    pub region: String,
    /// The slots the node serves now: what it announced, within its licence.
    pub slots_max: u32,
    /// The slots the operator licensed at registration: the most the node may announce.
    pub licensed_slots: u32,
    pub credential_hash: [u8; 32],
    /// The engines' shares of the slots, by lease number (`SlotsLeased`). They never sum
    /// past `slots_max` when one grows; an engine gives out a slot only from a lease it
    /// holds whose `until` has not passed, so engines sharing a stream cannot over-give.
    pub leases: BTreeMap<u64, SlotLease>,
    /// The number the next new lease gets (one past the highest seen).
    pub next_lease: u64,
    /// Engines asking for a fair share of the slots (`SlotsWanted`), until when; an
    /// engine's want ends when its lease here grows.
    pub wants: BTreeMap<String, Millis>,
}

/// One engine's share of a node's slots, until a time it renews before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotLease {
    pub holder: String,
    pub slots: u32,
    pub until: Millis,
}

impl Node {
    /// The slots every lease but `except` holds.
    pub fn leased_except(&self, except: Option<u64>) -> u64 {
        self.leases.iter().filter(|(id, _)| Some(**id) != except).map(|(_, lease)| u64::from(lease.slots)).sum()
    }
}

#[derive(Clone, Debug)]
pub enum NodeCommand {
    Register {
        node: NodeId,
        region: String,
        slots_max: u32,
        credential_hash: [u8; 32],
    },
    ChangeCapacity {
        slots_max: u32,
    },
    Drain,
    Remove,
    /// `holder` (an engine) sets its lease `lease` (None: a new one) to `slots` until
    /// `now + ttl_ms`: grows it (only within the slots no other lease holds, on an active
    /// node), shrinks it (to 0: gives it back) or renews it.
    Lease {
        lease: Option<u64>,
        holder: String,
        slots: u32,
        ttl_ms: u64,
    },
    /// As `Lease`, growing lease `lease` (None: a new one) by up to `by` slots, as many as
    /// no lease holds: placements asking at once each add theirs.
    Grow {
        lease: Option<u64>,
        holder: String,
        by: u32,
        ttl_ms: u64,
    },
    /// `holder` found every slot leased by others and asks for a fair share until
    /// `now + ttl_ms` (`SlotsWanted`); nothing when it already asks for longer than half that.
    Want {
        holder: String,
        ttl_ms: u64,
    },
    /// `holder` takes over lease `lease` whose holder let it run out more than `grace_ms`
    /// ago (a dead engine): its slots in use are the new holder's to count.
    TakeOver {
        lease: u64,
        holder: String,
        ttl_ms: u64,
        grace_ms: u64,
    },
}

fn check_slots(slots_max: u32) -> Result<(), Rejection> {
    if slots_max == 0 || slots_max > SLOTS_MAX {
        return Err(Rejection::InvalidArgument { field: "slots_max", reason: format!("must be 1..={SLOTS_MAX}") });
    }
    Ok(())
}

impl Aggregate for Node {
    type Command = NodeCommand;
    const KIND: AggregateKind = AggregateKind::Node;

    fn decide(&self, command: &NodeCommand, now: Millis) -> Result<Vec<Event>, Rejection> {
        let node_id = || self.id.clone().unwrap_or_else(|| NodeId::new(""));
        match (command, self.status) {
            (NodeCommand::Register { node, .. }, status) if status != NodeStatus::Unknown => Err(Rejection::AlreadyExists { kind: "node", id: node.0.clone() }),
            (NodeCommand::Register { node, region, slots_max, credential_hash }, _) => {
                validate::id("node_id", &node.0)?;
                validate::id("region", region)?;
                check_slots(*slots_max)?;
                Ok(vec![Event::NodeRegistered { node_id: node.clone(), region: region.clone(), slots_max: *slots_max, credential_hash: *credential_hash }])
            }
            (_, NodeStatus::Unknown) => Err(Rejection::NotFound { kind: "node", id: String::new() }),
            (_, NodeStatus::Removed) => Err(Rejection::NodeUnavailable),
            (NodeCommand::ChangeCapacity { slots_max }, _) => {
                check_slots(*slots_max)?;
                // The operator licensed the capacity: a node may announce less, never more.
                let granted = (*slots_max).min(self.licensed_slots);
                if granted == self.slots_max {
                    return Ok(vec![]);
                }
                Ok(vec![Event::NodeCapacityChanged { node_id: node_id(), slots_max: granted }])
            }
            (NodeCommand::Lease { lease, holder, slots, ttl_ms }, status) => self.decide_lease(*lease, holder, *slots, *ttl_ms, status, now),
            (NodeCommand::Grow { lease, holder, by, ttl_ms }, status) => {
                let current = match lease {
                    Some(id) => self.leases.get(id).filter(|held| held.holder == *holder).map(|held| held.slots).ok_or(Rejection::SlotLeaseLost)?,
                    None => 0,
                };
                let free = u64::from(self.slots_max).saturating_sub(self.leased_except(None));
                let add = u32::try_from(free.min(u64::from(*by))).unwrap_or(0);
                if add == 0 {
                    return Err(Rejection::NoNodeAvailable);
                }
                self.decide_lease(*lease, holder, current + add, *ttl_ms, status, now)
            }
            (NodeCommand::TakeOver { lease, holder, ttl_ms, grace_ms }, _) => {
                validate::id("holder", holder)?;
                let held = self.leases.get(lease).ok_or(Rejection::NotFound { kind: "slot lease", id: lease.to_string() })?;
                if held.holder == *holder {
                    return Err(Rejection::InvalidArgument { field: "holder", reason: "already holds the lease: renew it".into() });
                }
                let free_from = held.until.plus_ms(*grace_ms);
                if now <= free_from {
                    return Err(Rejection::NotExpired { expires_at: free_from });
                }
                Ok(vec![Event::SlotsLeased { node_id: node_id(), lease: *lease, holder: holder.clone(), slots: held.slots, until: now.plus_ms(*ttl_ms) }])
            }
            (NodeCommand::Want { .. }, status) if status != NodeStatus::Active => Err(Rejection::NoNodeAvailable),
            (NodeCommand::Want { holder, ttl_ms }, _) => {
                validate::id("holder", holder)?;
                check_lease_ttl(*ttl_ms)?;
                let until = now.plus_ms(*ttl_ms);
                if self.wants.get(holder).is_some_and(|asked| *asked > now.plus_ms(ttl_ms / 2)) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::SlotsWanted { node_id: node_id(), holder: holder.clone(), until }])
            }
            (NodeCommand::Drain, NodeStatus::Drained) => Ok(vec![]),
            (NodeCommand::Drain, _) => Ok(vec![Event::NodeDrained { node_id: node_id() }]),
            (NodeCommand::Remove, _) => Ok(vec![Event::NodeRemoved { node_id: node_id() }]),
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::NodeRegistered { node_id, region, slots_max, credential_hash } => {
                self.status = NodeStatus::Active;
                self.id = Some(node_id.clone());
                self.region = region.clone();
                self.slots_max = *slots_max;
                self.licensed_slots = *slots_max;
                self.credential_hash = *credential_hash;
            }
            Event::NodeCapacityChanged { slots_max, .. } => self.slots_max = *slots_max,
            Event::SlotsLeased { lease, holder, slots, until, .. } => {
                if *slots > self.leases.get(lease).map_or(0, |held| held.slots) {
                    self.wants.remove(holder);
                }
                if *slots == 0 {
                    self.leases.remove(lease);
                } else {
                    self.leases.insert(*lease, SlotLease { holder: holder.clone(), slots: *slots, until: *until });
                }
                self.next_lease = self.next_lease.max(lease.saturating_add(1));
            }
            Event::SlotsWanted { holder, until, .. } => {
                self.wants.insert(holder.clone(), *until);
            }
            Event::NodeDrained { .. } => self.status = NodeStatus::Drained,
            Event::NodeRemoved { .. } => self.status = NodeStatus::Removed,
            _ => {}
        }
        self
    }

    fn command_name(command: &NodeCommand) -> &'static str {
        match command {
            NodeCommand::Register { .. } => "RegisterNode",
            NodeCommand::ChangeCapacity { .. } => "ChangeNodeCapacity",
            NodeCommand::Drain => "DrainNode",
            NodeCommand::Remove => "RemoveNode",
            NodeCommand::Lease { .. } | NodeCommand::Grow { .. } => "LeaseSlots",
            NodeCommand::TakeOver { .. } => "TakeOverSlotLease",
            NodeCommand::Want { .. } => "WantSlots",
        }
    }
}

impl Node {
    fn decide_lease(&self, lease: Option<u64>, holder: &str, slots: u32, ttl_ms: u64, status: NodeStatus, now: Millis) -> Result<Vec<Event>, Rejection> {
        validate::id("holder", holder)?;
        check_lease_ttl(ttl_ms)?;
        let current = match lease {
            Some(id) => match self.leases.get(&id) {
                Some(held) if held.holder == holder => held.slots,
                _ => return Err(Rejection::SlotLeaseLost),
            },
            None if slots == 0 => return Err(Rejection::InvalidArgument { field: "slots", reason: "a new lease holds at least one slot".into() }),
            None => 0,
        };
        // Growing takes slots no other lease holds, on a node that takes new work.
        if slots > current && (status != NodeStatus::Active || self.leased_except(lease) + u64::from(slots) > u64::from(self.slots_max)) {
            return Err(Rejection::NoNodeAvailable);
        }
        let id = lease.unwrap_or(self.next_lease.max(1));
        let until = if slots == 0 { now } else { now.plus_ms(ttl_ms) };
        Ok(vec![Event::SlotsLeased { node_id: self.id.clone().unwrap_or_else(|| NodeId::new("")), lease: id, holder: holder.to_string(), slots, until }])
    }
}

fn check_lease_ttl(ttl_ms: u64) -> Result<(), Rejection> {
    if ttl_ms == 0 || ttl_ms > SLOT_LEASE_TTL_MS_MAX {
        return Err(Rejection::InvalidArgument { field: "ttl_ms", reason: format!("must be 1..={SLOT_LEASE_TTL_MS_MAX}") });
    }
    Ok(())
}

/// The longest a slot lease runs before its holder must renew it.
pub const SLOT_LEASE_TTL_MS_MAX: u64 = 3_600_000;

// ---- consumer ----

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub serial: CertSerial,
    pub public_key_der: Vec<u8>,
    pub not_before: Millis,
    pub not_after: Millis,
    pub engine_key_id: String,
    pub signature: Vec<u8>,
    pub revoked: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumer {
    pub id: Option<ConsumerId>,
    pub certs: BTreeMap<CertSerial, Certificate>,
}

impl Consumer {
    /// The standing of a certificate at `now`.
    pub fn cert_check(&self, serial: &CertSerial, now: Millis) -> super::voucher::CertCheck {
        use super::voucher::CertCheck;
        match self.certs.get(serial) {
            None => CertCheck::Unknown,
            Some(cert) if cert.revoked => CertCheck::Revoked,
            Some(cert) if now < cert.not_before || now > cert.not_after => CertCheck::NotValid,
            Some(_) => CertCheck::Valid,
        }
    }
}

#[derive(Clone, Debug)]
pub enum ConsumerCommand {
    /// The shell has signed the certificate; the domain checks and records it.
    Certify {
        consumer: ConsumerId,
        cert: Certificate,
    },
    Revoke {
        serial: CertSerial,
        reason: String,
    },
    /// Revokes every certificate the consumer holds that is not revoked yet (one
    /// `CertRevoked` each); a consumer with none left changes nothing.
    RevokeAll {
        reason: String,
    },
}

impl Aggregate for Consumer {
    type Command = ConsumerCommand;
    const KIND: AggregateKind = AggregateKind::Consumer;

    fn decide(&self, command: &ConsumerCommand, _now: Millis) -> Result<Vec<Event>, Rejection> {
        match command {
            ConsumerCommand::Certify { consumer, cert } => {
                validate::id("consumer_id", &consumer.0)?;
                validate::id("cert_serial", &cert.serial.0)?;
                if self.certs.contains_key(&cert.serial) {
                    return Err(Rejection::AlreadyExists { kind: "certificate", id: cert.serial.0.clone() });
                }
                if self.certs.len() >= CERTS_PER_CONSUMER_MAX {
                    return Err(Rejection::InvalidArgument { field: "consumer_id", reason: format!("at most {CERTS_PER_CONSUMER_MAX} certificates") });
                }
                let validity = cert.not_after.0.saturating_sub(cert.not_before.0);
                if validity <= 0 || validity as u64 > CERT_VALIDITY_MS_MAX {
                    return Err(Rejection::InvalidArgument { field: "validity_ms", reason: format!("must be 1..={CERT_VALIDITY_MS_MAX}") });
                }
                if cert.public_key_der.is_empty() || cert.public_key_der.len() > 2048 {
                    return Err(Rejection::InvalidArgument { field: "public_key_der", reason: "must be an RSA public key".into() });
                }
                Ok(vec![Event::ConsumerCertified {
                    consumer_id: consumer.clone(),
                    cert_serial: cert.serial.clone(),
                    public_key_der: cert.public_key_der.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                    engine_key_id: cert.engine_key_id.clone(),
                    signature: cert.signature.clone(),
                }])
            }
            ConsumerCommand::Revoke { serial, reason } => {
                let cert = self.certs.get(serial).ok_or_else(|| Rejection::NotFound { kind: "certificate", id: serial.0.clone() })?;
                if cert.revoked {
                    return Ok(vec![]);
                }
                validate::text("reason", reason, 256)?;
                Ok(vec![Event::CertRevoked {
                    consumer_id: self.id.clone().unwrap_or_else(|| ConsumerId::new("")),
                    cert_serial: serial.clone(),
                    reason: reason.clone(),
                }])
            }
            ConsumerCommand::RevokeAll { reason } => {
                let consumer_id = self.id.clone().ok_or_else(|| Rejection::NotFound { kind: "consumer", id: String::new() })?;
                let valid: Vec<&CertSerial> = self.certs.values().filter(|cert| !cert.revoked).map(|cert| &cert.serial).collect();
                if valid.is_empty() {
                    return Ok(vec![]);
                }
                validate::text("reason", reason, 256)?;
                Ok(valid
                    .into_iter()
                    .map(|serial| Event::CertRevoked { consumer_id: consumer_id.clone(), cert_serial: serial.clone(), reason: reason.clone() })
                    .collect())
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::ConsumerCertified { consumer_id, cert_serial, public_key_der, not_before, not_after, engine_key_id, signature } => {
                self.id = Some(consumer_id.clone());
                self.certs.insert(
                    cert_serial.clone(),
                    Certificate {
                        serial: cert_serial.clone(),
                        public_key_der: public_key_der.clone(),
                        not_before: *not_before,
                        not_after: *not_after,
                        engine_key_id: engine_key_id.clone(),
                        signature: signature.clone(),
                        revoked: false,
                    },
                );
            }
            Event::CertRevoked { cert_serial, .. } => {
                if let Some(cert) = self.certs.get_mut(cert_serial) {
                    cert.revoked = true;
                }
            }
            _ => {}
        }
        self
    }

    fn command_name(command: &ConsumerCommand) -> &'static str {
        match command {
            ConsumerCommand::Certify { .. } => "CertifyConsumer",
            ConsumerCommand::Revoke { .. } => "RevokeCert",
            ConsumerCommand::RevokeAll { .. } => "RevokeAllCerts",
        }
    }
}
