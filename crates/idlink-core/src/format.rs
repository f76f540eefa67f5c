//! Reading state and records written by earlier formats.
//!
//! Snapshots and internal records are postcard, which writes a struct's
//! fields back to back with no names: a field added since cannot be found
//! missing by looking. Whoever reads bytes of an earlier format says what
//! that format lacks with an [`OldFormat`] guard, and every field added
//! since is marked with the `deserialize_with` of its addition
//! ([`added_platform`], [`added_source_state`]): under a guard that lacks
//! it, it takes its default without reading, otherwise it is read as
//! usual. Fields are only ever added at the end of a struct.

use serde::{Deserialize, Deserializer};
use std::cell::Cell;

/// The phone platform (engine snapshot format 5, device stage 3, bucket
/// stage 2, wire format 2).
pub(crate) const PLATFORM: u8 = 1;
/// The watermark sources' resumption holds and kind (engine snapshot
/// format 6, device stage 4).
pub(crate) const SOURCE_STATE: u8 = 2;

thread_local! {
    /// The additions the format this thread reads lacks (bits above).
    static MISSING: Cell<u8> = const { Cell::new(0) };
}

/// While it lives, this thread reads a format that lacks some additions.
#[must_use = "the old format is read only while the guard lives"]
pub(crate) struct OldFormat {
    /// What was lacking before, restored on drop (guards nest).
    was: u8,
}

impl OldFormat {
    /// Starts reading a format that lacks the additions `missing`.
    pub(crate) fn lacking(missing: u8) -> OldFormat {
        OldFormat {
            was: MISSING.replace(missing),
        }
    }
}

impl Drop for OldFormat {
    fn drop(&mut self) {
        MISSING.set(self.was);
    }
}

/// A field of addition `addition`: its default when the format read
/// lacks it (nothing was written there), otherwise read.
fn added<'de, D, T>(d: D, addition: u8) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    if MISSING.get() & addition != 0 {
        Ok(T::default())
    } else {
        T::deserialize(d)
    }
}

/// `deserialize_with` for a field of the phone platform's addition.
pub(crate) fn added_platform<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    added(d, PLATFORM)
}

/// `deserialize_with` for a field of the sources' state's addition.
pub(crate) fn added_source_state<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    added(d, SOURCE_STATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize, Deserialize)]
    struct Before {
        a: u32,
        b: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct After {
        a: u32,
        b: String,
        #[serde(deserialize_with = "added_platform")]
        c: u8,
    }

    #[test]
    fn an_added_field_reads_as_its_default_only_under_the_guard() {
        let old = postcard::to_stdvec(&vec![
            Before {
                a: 1,
                b: "x".into(),
            },
            Before {
                a: 2,
                b: "y".into(),
            },
        ])
        .unwrap();
        let read: Vec<After> = {
            let _old = OldFormat::lacking(PLATFORM);
            postcard::from_bytes(&old).unwrap()
        };
        assert_eq!(
            read[1],
            After {
                a: 2,
                b: "y".into(),
                c: 0
            }
        );
        let new = postcard::to_stdvec(&read[1]).unwrap();
        let again: After = postcard::from_bytes(&[&new[..], &[9]].concat()).unwrap();
        assert_eq!(again, read[1]);
        assert_eq!(MISSING.get(), 0, "the guard is gone with its scope");
    }
}
