//! Projections over the Vouchsafe event stream.
