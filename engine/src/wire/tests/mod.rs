//! Tests of `engine::wire`: every event survives `encode` → `decode` unchanged, each domain
//! field lands in the protobuf field the schema names for it, arbitrary and mutated bytes
//! never panic the decoder, every malformed envelope fails with its precise `DecodeError`,
//! and a golden encoding pins the bytes of schema version 1.
//!
//! What does not live here: how the log backends store these bytes (the EventLog
//! conformance suite) and whether an event's contents make sense (the domain's `decide`).
//!
//! The tests sit in files by theme: `examples` (every variant by hand, the schema's field
//! names), `roundtrip` (arbitrary events), `fuzz` (hostile and damaged bytes), `errors`
//! (the precise error of each malformed envelope) and `golden` (stable bytes).

mod errors;
mod examples;
mod fuzz;
mod golden;
mod roundtrip;
