//! Identifier newtypes, so a device id can never be passed where an account
//! id is expected.
//!
//! The text is a `SmolStr`: ids of up to 23 bytes (most cookie and account
//! ids) live inline in the 24-byte value, so decoding one allocates
//! nothing, and an event waiting in the reorder buffer carries its ids in
//! its own cache lines instead of two heap blocks.

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use std::fmt;

/// A device or cookie identifier as it appears in the input contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub SmolStr);

/// An account identifier as it appears in the input contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub SmolStr);

macro_rules! id_impls {
    ($t:ident) => {
        impl $t {
            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(SmolStr::new(s))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
id_impls!(DeviceId);
id_impls!(AccountId);
