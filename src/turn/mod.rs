//! The TURN relay: RFC 8656 (with RFC 5766 clients in mind) over UDP.
//!
//! Implemented: Allocate (§7.2; REQUESTED-TRANSPORT UDP, REQUESTED-ADDRESS-FAMILY,
//! DONT-FRAGMENT, EVEN-PORT with RESERVATION-TOKEN), Refresh (§7.3),
//! CreatePermission (§9, several peers at once), ChannelBind (§11, channels
//! 0x4000–0x4FFF as §12 requires), Send and Data indications (§10),
//! ChannelData both ways (§12.4), long-term credentials (RFC 8489 §9.2).
//!
//! Deliberate choices:
//! - Retransmitted requests on an allocation are answered from a small
//!   per-allocation cache of recent responses, not re-executed (§7.2, §7.3).
//! - A client with an allocation keeps the key it allocated with, so an
//!   expiring REST username does not break refreshes (as coturn does).
//! - Not implemented yet: ADDITIONAL-ADDRESS-FAMILY dual allocations, TCP
//!   allocations (RFC 6062), MESSAGE-INTEGRITY-SHA256 and PASSWORD-ALGORITHMS,
//!   mobility (RFC 8016). Browsers use none of them.

pub(crate) mod allocation;
pub(crate) mod core;
pub(crate) mod ports;
pub(crate) mod relay;
pub(crate) mod table;
