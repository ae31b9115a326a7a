//! The text of a caught panic, for the errors that report a library that panicked under
//! us (sled opening a damaged file is the known case: PITFALLS.md, sled #1533). Not here:
//! catching panics (the callers decide where `catch_unwind` is sound).

/// The message a panic carried, when it was a string; "unknown panic payload" otherwise.
pub fn message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn string_payloads_are_read_and_others_named() {
        let caught = std::panic::catch_unwind(|| panic!("static text")).expect_err("panics");
        assert_eq!(super::message(caught.as_ref()), "static text");
        let caught = std::panic::catch_unwind(|| panic!("formatted {}", 7)).expect_err("panics");
        assert_eq!(super::message(caught.as_ref()), "formatted 7");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(42_u8)).expect_err("panics");
        assert_eq!(super::message(caught.as_ref()), "unknown panic payload");
    }
}
