//! Reading state and records written by the previous format.
//!
//! Snapshots and internal records are postcard, which writes a struct's
//! fields back to back with no names: a field added since cannot be found
//! missing by looking. Whoever reads bytes of the previous format says so
//! with an [`OldFormat`] guard, and every field added since is marked
//! `#[serde(deserialize_with = "crate::format::added")]`: under the guard
//! it takes its default without reading, otherwise it is read as usual.
//! Fields are only ever added at the end of a struct.

use serde::{Deserialize, Deserializer};
use std::cell::Cell;

thread_local! {
    /// Whether this thread is reading bytes of the previous format.
    static READING_OLD: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, this thread reads the previous format.
#[must_use = "the old format is read only while the guard lives"]
pub(crate) struct OldFormat {
    /// What the flag was before, restored on drop (guards nest).
    was: bool,
}

impl OldFormat {
    /// Starts reading the previous format.
    pub(crate) fn enter() -> OldFormat {
        OldFormat {
            was: READING_OLD.replace(true),
        }
    }
}

impl Drop for OldFormat {
    fn drop(&mut self) {
        READING_OLD.set(self.was);
    }
}

/// `deserialize_with` for a field the current format added: its default
/// when the previous format is read (it wrote nothing there).
pub(crate) fn added<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    if READING_OLD.get() {
        Ok(T::default())
    } else {
        T::deserialize(d)
    }
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
        #[serde(deserialize_with = "added")]
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
            let _old = OldFormat::enter();
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
        assert!(!READING_OLD.get(), "the guard is gone with its scope");
    }
}
