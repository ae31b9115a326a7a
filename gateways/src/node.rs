//! The delivery node agent (`vouchsafe node`); being written.
