//! The Singer protocol: messages, catalogs and state, and the JSON-lines codec.
//!
//! Every tap, target and the runner share these types. Fields ferry does not know are kept
//! (in `extra` maps or in the raw JSON of a catalog) and written back out unchanged.

pub mod catalog;
pub mod codec;
pub mod message;
pub mod state;
pub mod stream_map;

pub use catalog::{Catalog, CatalogStream};
pub use codec::{Check, DecodeError, Envelope};
pub use message::{
    ActivateVersionMessage, Message, Record, RecordMessage, SchemaMessage, StateMessage,
};
pub use stream_map::StreamMap;
