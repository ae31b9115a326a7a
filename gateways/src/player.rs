//! The reference player (`vouchsafe player`); being written.
