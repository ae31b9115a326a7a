//! Looking up an ordered map by a key's borrowed parts, so that the hot path of applying an
//! event builds no owned key (no `String`) for a line the map already holds.
//!
//! `BTreeMap::get` takes any `Q` the key can `Borrow` as, ordered the same way. A tuple of
//! `&str` cannot be borrowed out of an owned key, but a trait object can: both the owned
//! key and its borrowed parts implement one trait that returns the parts, the owned key
//! lends itself as that trait object, and the trait object is ordered by its parts. The
//! owned key's derived order must therefore be the order of its parts, field by field;
//! each user keeps a property test of that contract.

/// Declares `trait $key`, implemented by `$owned` (its parts taken by `|$this| $parts_of`)
/// and by `$parts` itself, with `$owned: Borrow<dyn $key>` and `dyn $key` ordered by its
/// parts. A map keyed by `$owned` is then read with `map.get(&parts as &dyn $key)`.
macro_rules! borrowed_key {
    ($(#[$meta:meta])* $vis:vis trait $key:ident for $owned:ty, parts $parts:ty = |$this:ident| $parts_of:expr) => {
        $(#[$meta])*
        $vis trait $key {
            fn parts(&self) -> $parts;
        }

        impl $key for $owned {
            fn parts(&self) -> $parts {
                let $this = self;
                $parts_of
            }
        }

        impl $key for $parts {
            fn parts(&self) -> $parts {
                *self
            }
        }

        impl<'a> std::borrow::Borrow<dyn $key + 'a> for $owned {
            fn borrow(&self) -> &(dyn $key + 'a) {
                self
            }
        }

        impl PartialEq for dyn $key + '_ {
            fn eq(&self, other: &Self) -> bool {
                self.parts() == other.parts()
            }
        }

        impl Eq for dyn $key + '_ {}

        impl PartialOrd for dyn $key + '_ {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for dyn $key + '_ {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.parts().cmp(&other.parts())
            }
        }
    };
}

pub(crate) use borrowed_key;
