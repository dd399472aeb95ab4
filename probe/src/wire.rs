//! The probe's wire format, version 1: what `wgkeep probe` and `wgkeep reflect` say to each other.
//!
//! Every packet is a fixed-size UDP payload (all integers big-endian):
//!
//! ```text
//! off  len
//! 0    2    magic "wk" (0x77 0x6b)
//! 2    1    version = 1
//! 3    1    type
//! 4    8    id: u64, the question id, or a nonce for CookieRequest / CookieReply
//! 12   ..   body, per type (reserved bytes must be zero)
//! L-16 16   mac: keyed BLAKE2s, 16-byte output (RFC 7693), key = the session key, over [0, L-16)
//! ```
//!
//! | type | name          | L   | body                                                              |
//! |------|---------------|-----|-------------------------------------------------------------------|
//! | 0x01 | CookieRequest | 64  | 12..48 zero                                                       |
//! | 0x02 | CookieReply   | 48  | 12..28 cookie, 28..32 valid_ms u32                                |
//! | 0x03 | Init          | 148 | 12..28 cookie, 28 flags (bit 0 = REPLY), 29..132 zero             |
//! | 0x04 | Response      | 92  | 12..76 zero                                                       |
//! | 0x05 | Follow        | 32  | 12..16 seq u32                                                    |
//! | 0x06 | Schedule      | 64  | 12..28 cookie, 28..32 check_ms u32, 32..36 refresh_ms u32, 36..48 zero |
//! | 0x07 | Ack           | 32  | 12 status u8, 13..16 zero                                         |
//! | 0x08 | Check         | 32  | 12..16 idle_ms u32                                                |
//! | 0x09 | Refresh       | 32  | 12..16 idle_ms u32                                                |
//!
//! Init, Response and Follow have the sizes of WireGuard's handshake initiation (148 B), handshake
//! response (92 B) and keepalive (32 B), so a question's traffic looks to a NAT like a WireGuard
//! handshake. Every reply is no larger than the request it answers. `docs/probe-protocol.md` has
//! the whole protocol, its safety rules and their rationale.
//!
//! The API follows smoltcp: [`Packet`] wraps a buffer and reads or writes fields in place
//! ([`Packet::new_checked`] validates the structure, [`Packet::verify`] the MAC); [`Message`] is
//! the parsed, owned representation, with [`Message::parse`] and [`Message::emit`]. [`decode`] does
//! all three steps for a received datagram.

use std::fmt;
use std::ops::Range;

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

/// The first two bytes of every packet: `"wk"`.
pub const MAGIC: [u8; 2] = *b"wk";
/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Length of the trailing MAC.
pub const MAC_LEN: usize = 16;
/// Length of a return-routability cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of a session [`Key`].
pub const KEY_LEN: usize = 32;
/// Length of the common header (magic, version, type, id).
pub const HEADER_LEN: usize = 12;
/// The longest packet (Init).
pub const MAX_PACKET_LEN: usize = 148;
/// The shortest packet (Follow, Ack, Check, Refresh).
pub const MIN_PACKET_LEN: usize = 32;
/// The shortest PSK file contents [`Key::from_psk`] accepts, after trimming whitespace.
pub const MIN_PSK_LEN: usize = 16;
/// Init flag: answer with a Response right away.
pub const FLAG_REPLY: u8 = 0x01;

const PUBLIC_KEY_LABEL: &[u8] = b"wgkeep probe v1 public key";
const PSK_LABEL: &[u8] = b"wgkeep probe v1 psk";

/// Byte ranges of the fields.
mod field {
    use std::ops::Range;

    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const TYPE: usize = 3;
    pub const ID: Range<usize> = 4..12;
    /// CookieReply, Init, Schedule.
    pub const COOKIE: Range<usize> = 12..28;
    /// CookieReply.
    pub const VALID_MS: Range<usize> = 28..32;
    /// Init.
    pub const FLAGS: usize = 28;
    /// Follow.
    pub const SEQ: Range<usize> = 12..16;
    /// Schedule.
    pub const CHECK_MS: Range<usize> = 28..32;
    /// Schedule.
    pub const REFRESH_MS: Range<usize> = 32..36;
    /// Ack.
    pub const STATUS: usize = 12;
    /// Check, Refresh.
    pub const IDLE_MS: Range<usize> = 12..16;
}

/// A packet's type (byte 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Client → reflector: asks for a cookie; also an RTT ping and the control socket's keepalive.
    CookieRequest = 1,
    /// Reflector → client: a cookie for the client's IP address.
    CookieReply = 2,
    /// Client → reflector: opens a question (148 B, a WireGuard initiation's size).
    Init = 3,
    /// Reflector → client: the immediate answer to an Init with REPLY (92 B).
    Response = 4,
    /// Client → reflector: one more packet of the question's pattern (32 B).
    Follow = 5,
    /// Client → reflector, from the control socket: send a Check after an idle time.
    Schedule = 6,
    /// Reflector → client: the answer to a Schedule.
    Ack = 7,
    /// Reflector → client: the delayed packet that tests the NAT entry.
    Check = 8,
    /// Reflector → client: an inbound packet before the Check (does inbound traffic refresh?).
    Refresh = 9,
}

impl MessageType {
    /// Every type, in wire order.
    pub const ALL: [MessageType; 9] = [
        MessageType::CookieRequest,
        MessageType::CookieReply,
        MessageType::Init,
        MessageType::Response,
        MessageType::Follow,
        MessageType::Schedule,
        MessageType::Ack,
        MessageType::Check,
        MessageType::Refresh,
    ];

    /// The exact length of a packet of this type, MAC included.
    #[allow(clippy::len_without_is_empty)] // a type's fixed length; no packet is empty
    pub const fn len(self) -> usize {
        match self {
            MessageType::CookieRequest => 64,
            MessageType::CookieReply => 48,
            MessageType::Init => 148,
            MessageType::Response => 92,
            MessageType::Follow => 32,
            MessageType::Schedule => 64,
            MessageType::Ack => 32,
            MessageType::Check => 32,
            MessageType::Refresh => 32,
        }
    }

    /// The byte ranges that must be zero.
    const fn reserved(self) -> Range<usize> {
        match self {
            MessageType::CookieRequest => 12..48,
            MessageType::Init => 29..132,
            MessageType::Response => 12..76,
            MessageType::Schedule => 36..48,
            MessageType::Ack => 13..16,
            MessageType::CookieReply
            | MessageType::Follow
            | MessageType::Check
            | MessageType::Refresh => 0..0,
        }
    }

    fn has_cookie(self) -> bool {
        matches!(
            self,
            MessageType::CookieReply | MessageType::Init | MessageType::Schedule
        )
    }

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::CookieRequest => "cookie-request",
            MessageType::CookieReply => "cookie-reply",
            MessageType::Init => "init",
            MessageType::Response => "response",
            MessageType::Follow => "follow",
            MessageType::Schedule => "schedule",
            MessageType::Ack => "ack",
            MessageType::Check => "check",
            MessageType::Refresh => "refresh",
        }
    }
}

impl TryFrom<u8> for MessageType {
    type Error = WireError;

    fn try_from(value: u8) -> Result<MessageType, WireError> {
        MessageType::ALL
            .get(usize::from(value).wrapping_sub(1))
            .copied()
            .ok_or(WireError::UnknownType(value))
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a buffer is not a valid packet, or a PSK not a valid key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 12-byte header (or, for [`Packet::verify`], than the MAC).
    #[error("packet truncated: {len} bytes")]
    Truncated {
        /// The buffer's length.
        len: usize,
    },
    /// The first two bytes are not `"wk"`.
    #[error("bad magic")]
    BadMagic,
    /// A version other than [`VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A type byte outside 1..=9.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The length does not match the type.
    #[error("{ty} must be {expected} bytes, got {got}")]
    BadLength {
        /// The packet's type.
        ty: MessageType,
        /// Its fixed length.
        expected: usize,
        /// The buffer's length.
        got: usize,
    },
    /// Padding or reserved bytes are not zero.
    #[error("nonzero reserved bytes")]
    NonZeroReserved,
    /// Init flags other than REPLY are set.
    #[error("unknown flags")]
    BadFlags,
    /// An Ack status this version does not define.
    #[error("unknown ack status {0}")]
    UnknownStatus(u8),
    /// The MAC does not match (corrupted, or another key / PSK).
    #[error("bad MAC (corrupted packet, or a different PSK)")]
    BadMac,
    /// The PSK file holds fewer than [`MIN_PSK_LEN`] bytes after trimming.
    #[error("PSK too short: {len} bytes after trimming whitespace, need at least {MIN_PSK_LEN} (try `wg genpsk`)")]
    PskTooShort {
        /// Its trimmed length.
        len: usize,
    },
}

/// The 32-byte session key the MACs are computed with.
///
/// Without a PSK both sides use [`Key::public`], and the MAC only guards against corruption and
/// stray traffic; with a PSK ([`Key::from_psk`]) it also authenticates: a reflector answers only
/// clients that know its PSK. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// The well-known key used without a PSK: BLAKE2s-256(`"wgkeep probe v1 public key"`).
    pub fn public() -> Key {
        Key(Blake2s256::digest(PUBLIC_KEY_LABEL).into())
    }

    /// The key derived from a PSK file's contents: BLAKE2s-256(`"wgkeep probe v1 psk"` ||
    /// contents with leading and trailing ASCII whitespace removed). The contents are used as
    /// they are (a `wg genpsk` file's 44 base64 characters are not decoded). Fails when fewer than
    /// [`MIN_PSK_LEN`] bytes remain.
    pub fn from_psk(contents: &[u8]) -> Result<Key, WireError> {
        let trimmed = contents.trim_ascii();
        if trimmed.len() < MIN_PSK_LEN {
            return Err(WireError::PskTooShort { len: trimmed.len() });
        }
        let digest = Blake2s256::new()
            .chain_update(PSK_LABEL)
            .chain_update(trimmed)
            .finalize();
        Ok(Key(digest.into()))
    }

    /// Keyed BLAKE2s with a 16-byte output over `data`.
    pub fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Blake2sMac<U16> as KeyInit>::new(&self.0.into());
        Mac::update(&mut mac, data);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `data`, compared in constant time.
    fn verify_mac(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = <Blake2sMac<U16> as KeyInit>::new(&self.0.into());
        Mac::update(&mut mac, data);
        mac.verify_slice(tag).is_ok()
    }

    /// Whether this is [`Key::public`] (no PSK).
    pub fn is_public(&self) -> bool {
        // Both are public knowledge or the caller's own key: no need for constant time.
        self.0 == Key::public().0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_public() {
            f.write_str("Key(public)")
        } else {
            f.write_str("Key(psk)")
        }
    }
}

/// An Ack's status: what became of a Schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Armed: a Check (and a Refresh, if asked for) will be sent.
    Scheduled = 0,
    /// No such question from this IP address (never created, expired, or already checked).
    UnknownQuestion = 1,
    /// The check time (or the refresh time) has already passed.
    TooLate = 2,
    /// A reflector limit refused the question: per-IP or total question cap, or source table.
    LimitReached = 3,
    /// The Schedule's cookie is not valid for its source address (ask for a new one).
    BadCookie = 4,
    /// `check_ms` is 0 or above the reflector's maximum, or `refresh_ms` is not below it.
    BadDelay = 5,
    /// The question already has a check scheduled.
    AlreadyScheduled = 6,
}

impl AckStatus {
    const ALL: [AckStatus; 7] = [
        AckStatus::Scheduled,
        AckStatus::UnknownQuestion,
        AckStatus::TooLate,
        AckStatus::LimitReached,
        AckStatus::BadCookie,
        AckStatus::BadDelay,
        AckStatus::AlreadyScheduled,
    ];

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Scheduled => "scheduled",
            AckStatus::UnknownQuestion => "unknown-question",
            AckStatus::TooLate => "too-late",
            AckStatus::LimitReached => "limit-reached",
            AckStatus::BadCookie => "bad-cookie",
            AckStatus::BadDelay => "bad-delay",
            AckStatus::AlreadyScheduled => "already-scheduled",
        }
    }
}

impl TryFrom<u8> for AckStatus {
    type Error = WireError;

    fn try_from(value: u8) -> Result<AckStatus, WireError> {
        AckStatus::ALL
            .get(usize::from(value))
            .copied()
            .ok_or(WireError::UnknownStatus(value))
    }
}

impl fmt::Display for AckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A packet in a buffer, read and written in place.
///
/// The buffer is exactly the packet: its length is the packet's length, and the MAC is its last
/// [`MAC_LEN`] bytes.
///
/// Header getters ([`Packet::id`]) panic on a buffer shorter than [`HEADER_LEN`], which only
/// [`Packet::new_unchecked`] lets through. Typed getters never panic: they return `None` when
/// the packet's type has no such field (or the unchecked buffer is too short). Setters write at
/// fixed offsets and panic when the buffer is too short for the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(bytes);
    u32::from_be_bytes(a)
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without any check.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check`]: magic, version, a known type, its exact length,
    /// zero reserved bytes, known flags and status. The MAC is not checked ([`Packet::verify`]).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Validates everything but the MAC.
    pub fn check(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(WireError::Truncated { len: data.len() });
        }
        if data[field::MAGIC] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if data[field::VERSION] != VERSION {
            return Err(WireError::UnsupportedVersion(data[field::VERSION]));
        }
        let ty = MessageType::try_from(data[field::TYPE])?;
        if data.len() != ty.len() {
            return Err(WireError::BadLength {
                ty,
                expected: ty.len(),
                got: data.len(),
            });
        }
        if data[ty.reserved()].iter().any(|&b| b != 0) {
            return Err(WireError::NonZeroReserved);
        }
        match ty {
            MessageType::Init if data[field::FLAGS] & !FLAG_REPLY != 0 => Err(WireError::BadFlags),
            MessageType::Ack => AckStatus::try_from(data[field::STATUS]).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Checks the MAC over `[0, L-16)` against the last 16 bytes, in constant time.
    pub fn verify(&self, key: &Key) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < MAC_LEN {
            return Err(WireError::Truncated { len: data.len() });
        }
        let (covered, tag) = data.split_at(data.len() - MAC_LEN);
        if key.verify_mac(covered, tag) {
            Ok(())
        } else {
            Err(WireError::BadMac)
        }
    }

    /// The packet's length (the buffer's).
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.buffer.as_ref().is_empty()
    }

    /// The type, or `None` for an unknown type byte or a buffer too short to hold one.
    pub fn msg_type(&self) -> Option<MessageType> {
        let byte = *self.buffer.as_ref().get(field::TYPE)?;
        MessageType::try_from(byte).ok()
    }

    /// The question id (or the nonce of CookieRequest / CookieReply).
    ///
    /// # Panics
    /// On a buffer shorter than [`HEADER_LEN`] (only possible with [`Packet::new_unchecked`]).
    pub fn id(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.buffer.as_ref()[field::ID]);
        u64::from_be_bytes(a)
    }

    /// The MAC (last 16 bytes), or `None` for a shorter buffer.
    pub fn mac(&self) -> Option<[u8; MAC_LEN]> {
        let data = self.buffer.as_ref();
        let start = data.len().checked_sub(MAC_LEN)?;
        data[start..].try_into().ok()
    }

    /// The bytes of `range` when the packet's type is one of `types`.
    fn typed(&self, ok: impl Fn(MessageType) -> bool, range: Range<usize>) -> Option<&[u8]> {
        let ty = self.msg_type()?;
        if !ok(ty) {
            return None;
        }
        // A packet of another length than its type's is not one of that type.
        let data = self.buffer.as_ref();
        if data.len() != ty.len() {
            return None;
        }
        data.get(range)
    }

    /// The cookie of a CookieReply, Init or Schedule.
    pub fn cookie(&self) -> Option<[u8; COOKIE_LEN]> {
        let bytes = self.typed(MessageType::has_cookie, field::COOKIE)?;
        bytes.try_into().ok()
    }

    /// A CookieReply's `valid_ms`.
    pub fn valid_ms(&self) -> Option<u32> {
        self.typed(|t| t == MessageType::CookieReply, field::VALID_MS)
            .map(be_u32)
    }

    /// An Init's flags byte.
    pub fn flags(&self) -> Option<u8> {
        self.typed(|t| t == MessageType::Init, field::FLAGS..field::FLAGS + 1)
            .map(|b| b[0])
    }

    /// Whether an Init asks for an immediate Response.
    pub fn reply(&self) -> Option<bool> {
        self.flags().map(|f| f & FLAG_REPLY != 0)
    }

    /// A Follow's sequence number.
    pub fn seq(&self) -> Option<u32> {
        self.typed(|t| t == MessageType::Follow, field::SEQ)
            .map(be_u32)
    }

    /// A Schedule's `check_ms`.
    pub fn check_ms(&self) -> Option<u32> {
        self.typed(|t| t == MessageType::Schedule, field::CHECK_MS)
            .map(be_u32)
    }

    /// A Schedule's `refresh_ms` (0: no Refresh).
    pub fn refresh_ms(&self) -> Option<u32> {
        self.typed(|t| t == MessageType::Schedule, field::REFRESH_MS)
            .map(be_u32)
    }

    /// An Ack's status, or `None` also for a status byte this version does not define.
    pub fn status(&self) -> Option<AckStatus> {
        let b = self.typed(|t| t == MessageType::Ack, field::STATUS..field::STATUS + 1)?;
        AckStatus::try_from(b[0]).ok()
    }

    /// A Check's or Refresh's `idle_ms`.
    pub fn idle_ms(&self) -> Option<u32> {
        self.typed(
            |t| matches!(t, MessageType::Check | MessageType::Refresh),
            field::IDLE_MS,
        )
        .map(be_u32)
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes magic, version, type and id, and zeroes the rest of the buffer (body and MAC).
    pub fn set_header(&mut self, ty: MessageType, id: u64) {
        let data = self.buffer.as_mut();
        data.fill(0);
        data[field::MAGIC].copy_from_slice(&MAGIC);
        data[field::VERSION] = VERSION;
        data[field::TYPE] = ty as u8;
        data[field::ID].copy_from_slice(&id.to_be_bytes());
    }

    /// Sets the id.
    pub fn set_id(&mut self, id: u64) {
        self.buffer.as_mut()[field::ID].copy_from_slice(&id.to_be_bytes());
    }

    /// Sets the cookie (CookieReply, Init, Schedule).
    pub fn set_cookie(&mut self, cookie: &[u8; COOKIE_LEN]) {
        self.buffer.as_mut()[field::COOKIE].copy_from_slice(cookie);
    }

    /// Sets a CookieReply's `valid_ms`.
    pub fn set_valid_ms(&mut self, ms: u32) {
        self.buffer.as_mut()[field::VALID_MS].copy_from_slice(&ms.to_be_bytes());
    }

    /// Sets an Init's flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets a Follow's sequence number.
    pub fn set_seq(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets a Schedule's `check_ms`.
    pub fn set_check_ms(&mut self, ms: u32) {
        self.buffer.as_mut()[field::CHECK_MS].copy_from_slice(&ms.to_be_bytes());
    }

    /// Sets a Schedule's `refresh_ms`.
    pub fn set_refresh_ms(&mut self, ms: u32) {
        self.buffer.as_mut()[field::REFRESH_MS].copy_from_slice(&ms.to_be_bytes());
    }

    /// Sets an Ack's status.
    pub fn set_status(&mut self, status: AckStatus) {
        self.buffer.as_mut()[field::STATUS] = status as u8;
    }

    /// Sets a Check's or Refresh's `idle_ms`.
    pub fn set_idle_ms(&mut self, ms: u32) {
        self.buffer.as_mut()[field::IDLE_MS].copy_from_slice(&ms.to_be_bytes());
    }

    /// Computes the MAC over `[0, L-16)` and writes it to the last 16 bytes.
    ///
    /// # Panics
    /// On a buffer shorter than [`MAC_LEN`].
    pub fn fill_mac(&mut self, key: &Key) {
        let data = self.buffer.as_mut();
        let (covered, tag) = data.split_at_mut(data.len() - MAC_LEN);
        tag.copy_from_slice(&key.mac(covered));
    }
}

/// A parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Asks for a cookie (and measures the RTT).
    CookieRequest {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// A cookie for the requester's IP address.
    CookieReply {
        /// The request's nonce, or the qid of an Init whose cookie was not valid.
        nonce: u64,
        /// The cookie.
        cookie: [u8; COOKIE_LEN],
        /// For how long the reflector will still accept it.
        valid_ms: u32,
    },
    /// Opens a question.
    Init {
        /// The question id, chosen by the client at random.
        qid: u64,
        /// A cookie for the client's IP address.
        cookie: [u8; COOKIE_LEN],
        /// Answer with a Response right away.
        reply: bool,
    },
    /// The immediate answer to an Init with `reply`.
    Response {
        /// The question.
        qid: u64,
    },
    /// One more client packet of the question.
    Follow {
        /// The question.
        qid: u64,
        /// Counts the question's Follows (informative).
        seq: u32,
    },
    /// Asks for a Check `check_ms` after the question's last client packet.
    Schedule {
        /// The question.
        qid: u64,
        /// A cookie for the client's IP address.
        cookie: [u8; COOKIE_LEN],
        /// Idle time before the Check, in milliseconds.
        check_ms: u32,
        /// Idle time before a Refresh (0: none); below `check_ms`.
        refresh_ms: u32,
    },
    /// The answer to a Schedule.
    Ack {
        /// The question.
        qid: u64,
        /// What became of the Schedule.
        status: AckStatus,
    },
    /// The delayed packet: the NAT entry survived `idle_ms` if it arrives.
    Check {
        /// The question.
        qid: u64,
        /// The idle time the reflector actually waited since the question's last client packet.
        idle_ms: u32,
    },
    /// An inbound packet before the Check.
    Refresh {
        /// The question.
        qid: u64,
        /// The idle time since the question's last client packet.
        idle_ms: u32,
    },
}

impl Message {
    /// Parses a packet. The structure is checked again (so an unchecked packet is fine); the MAC
    /// is not (see [`Packet::verify`] and [`decode`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Message, WireError> {
        let p = Packet::new_checked(packet.buffer.as_ref())?;
        // After the check every typed getter of the packet's own type is `Some`.
        let missing = WireError::Truncated { len: p.len() };
        let id = p.id();
        let cookie = || p.cookie().ok_or(missing);
        let u32_of = |v: Option<u32>| v.ok_or(missing);
        let ty = p.msg_type().ok_or(missing)?;
        Ok(match ty {
            MessageType::CookieRequest => Message::CookieRequest { nonce: id },
            MessageType::CookieReply => Message::CookieReply {
                nonce: id,
                cookie: cookie()?,
                valid_ms: u32_of(p.valid_ms())?,
            },
            MessageType::Init => Message::Init {
                qid: id,
                cookie: cookie()?,
                reply: p.reply().ok_or(missing)?,
            },
            MessageType::Response => Message::Response { qid: id },
            MessageType::Follow => Message::Follow {
                qid: id,
                seq: u32_of(p.seq())?,
            },
            MessageType::Schedule => Message::Schedule {
                qid: id,
                cookie: cookie()?,
                check_ms: u32_of(p.check_ms())?,
                refresh_ms: u32_of(p.refresh_ms())?,
            },
            MessageType::Ack => Message::Ack {
                qid: id,
                status: p.status().ok_or(missing)?,
            },
            MessageType::Check => Message::Check {
                qid: id,
                idle_ms: u32_of(p.idle_ms())?,
            },
            MessageType::Refresh => Message::Refresh {
                qid: id,
                idle_ms: u32_of(p.idle_ms())?,
            },
        })
    }

    /// The message's type.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::CookieRequest { .. } => MessageType::CookieRequest,
            Message::CookieReply { .. } => MessageType::CookieReply,
            Message::Init { .. } => MessageType::Init,
            Message::Response { .. } => MessageType::Response,
            Message::Follow { .. } => MessageType::Follow,
            Message::Schedule { .. } => MessageType::Schedule,
            Message::Ack { .. } => MessageType::Ack,
            Message::Check { .. } => MessageType::Check,
            Message::Refresh { .. } => MessageType::Refresh,
        }
    }

    /// The id field: the question id, or the nonce.
    pub fn id(&self) -> u64 {
        match *self {
            Message::CookieRequest { nonce } | Message::CookieReply { nonce, .. } => nonce,
            Message::Init { qid, .. }
            | Message::Response { qid }
            | Message::Follow { qid, .. }
            | Message::Schedule { qid, .. }
            | Message::Ack { qid, .. }
            | Message::Check { qid, .. }
            | Message::Refresh { qid, .. } => qid,
        }
    }

    /// The length of the emitted packet, MAC included.
    pub fn buffer_len(&self) -> usize {
        self.msg_type().len()
    }

    /// Writes the packet, MAC included, to `buf[..self.buffer_len()]` and returns that length.
    /// Reserved bytes are zeroed; bytes after the packet are left alone.
    ///
    /// # Panics
    /// When `buf` is shorter than [`Message::buffer_len`] ([`MAX_PACKET_LEN`] always suffices).
    pub fn emit(&self, key: &Key, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        assert!(
            buf.len() >= len,
            "buffer of {} bytes too short for a {}-byte {}",
            buf.len(),
            len,
            self.msg_type()
        );
        let mut p = Packet::new_unchecked(&mut buf[..len]);
        p.set_header(self.msg_type(), self.id());
        match *self {
            Message::CookieRequest { .. } | Message::Response { .. } => {}
            Message::CookieReply {
                cookie, valid_ms, ..
            } => {
                p.set_cookie(&cookie);
                p.set_valid_ms(valid_ms);
            }
            Message::Init { cookie, reply, .. } => {
                p.set_cookie(&cookie);
                p.set_flags(if reply { FLAG_REPLY } else { 0 });
            }
            Message::Follow { seq, .. } => p.set_seq(seq),
            Message::Schedule {
                cookie,
                check_ms,
                refresh_ms,
                ..
            } => {
                p.set_cookie(&cookie);
                p.set_check_ms(check_ms);
                p.set_refresh_ms(refresh_ms);
            }
            Message::Ack { status, .. } => p.set_status(status),
            Message::Check { idle_ms, .. } | Message::Refresh { idle_ms, .. } => {
                p.set_idle_ms(idle_ms)
            }
        }
        p.fill_mac(key);
        len
    }

    /// The emitted packet in a new vector.
    pub fn to_vec(&self, key: &Key) -> Vec<u8> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(key, &mut buf);
        buf
    }
}

/// Decodes a received datagram: structure ([`Packet::new_checked`]), MAC ([`Packet::verify`]),
/// then [`Message::parse`].
pub fn decode(data: &[u8], key: &Key) -> Result<Message, WireError> {
    let packet = Packet::new_checked(data)?;
    packet.verify(key)?;
    Message::parse(&packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blake2::digest::consts::U32;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// One message of each type, with every field set to something non-trivial.
    pub(crate) fn samples() -> Vec<Message> {
        let cookie: [u8; 16] = core::array::from_fn(|i| 0xc0 + i as u8);
        vec![
            Message::CookieRequest {
                nonce: 0x0102_0304_0506_0708,
            },
            Message::CookieReply {
                nonce: 0x0102_0304_0506_0708,
                cookie,
                valid_ms: 180_000,
            },
            Message::Init {
                qid: 0x1122_3344_5566_7788,
                cookie,
                reply: true,
            },
            Message::Response {
                qid: 0x1122_3344_5566_7788,
            },
            Message::Follow {
                qid: 0x1122_3344_5566_7788,
                seq: 1,
            },
            Message::Schedule {
                qid: 0x1122_3344_5566_7788,
                cookie,
                check_ms: 150_000,
                refresh_ms: 60_000,
            },
            Message::Ack {
                qid: 0x1122_3344_5566_7788,
                status: AckStatus::Scheduled,
            },
            Message::Check {
                qid: 0x1122_3344_5566_7788,
                idle_ms: 150_000,
            },
            Message::Refresh {
                qid: 0x1122_3344_5566_7788,
                idle_ms: 60_000,
            },
        ]
    }

    fn psk_key() -> Key {
        Key::from_psk(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn lengths_are_wireguards() {
        // Initiation, response, keepalive (transport header 16 + empty payload + tag 16).
        assert_eq!(MessageType::Init.len(), 148);
        assert_eq!(MessageType::Response.len(), 92);
        assert_eq!(MessageType::Follow.len(), 32);
        for ty in MessageType::ALL {
            assert!(ty.len() >= MIN_PACKET_LEN && ty.len() <= MAX_PACKET_LEN);
            assert!(ty.reserved().end <= ty.len() - MAC_LEN);
        }
        for m in samples() {
            assert_eq!(m.to_vec(&Key::public()).len(), m.msg_type().len());
        }
    }

    #[test]
    fn replies_are_not_larger_than_requests() {
        use MessageType::*;
        for (request, reply) in [
            (CookieRequest, CookieReply),
            (Init, Response),
            (Init, CookieReply),
            (Schedule, Ack),
        ] {
            assert!(reply.len() <= request.len(), "{reply} > {request}");
        }
    }

    #[test]
    fn type_bytes_round_trip() {
        for ty in MessageType::ALL {
            assert_eq!(MessageType::try_from(ty as u8), Ok(ty));
        }
        for b in [0u8, 10, 0x80, 0xff] {
            assert_eq!(MessageType::try_from(b), Err(WireError::UnknownType(b)));
        }
        for s in AckStatus::ALL {
            assert_eq!(AckStatus::try_from(s as u8), Ok(s));
        }
        assert_eq!(AckStatus::try_from(7), Err(WireError::UnknownStatus(7)));
    }

    #[test]
    fn every_type_round_trips_with_both_keys() {
        for key in [Key::public(), psk_key()] {
            for m in samples() {
                let bytes = m.to_vec(&key);
                assert_eq!(decode(&bytes, &key), Ok(m));
                let p = Packet::new_checked(&bytes[..]).unwrap();
                assert_eq!(p.msg_type(), Some(m.msg_type()));
                assert_eq!(p.id(), m.id());
                assert_eq!(Message::parse(&p), Ok(m));
                // Emitting into a larger buffer writes exactly buffer_len bytes.
                let mut big = [0xaau8; MAX_PACKET_LEN + 8];
                let n = m.emit(&key, &mut big);
                assert_eq!(&big[..n], &bytes[..]);
                assert!(big[n..].iter().all(|&b| b == 0xaa));
            }
        }
        // Init without REPLY, Ack with every status.
        let key = Key::public();
        let m = Message::Init {
            qid: 7,
            cookie: [0; 16],
            reply: false,
        };
        assert_eq!(decode(&m.to_vec(&key), &key), Ok(m));
        for status in AckStatus::ALL {
            let m = Message::Ack { qid: 9, status };
            assert_eq!(decode(&m.to_vec(&key), &key), Ok(m));
        }
    }

    #[test]
    fn typed_getters_answer_only_for_their_type() {
        let key = Key::public();
        for m in samples() {
            let bytes = m.to_vec(&key);
            let p = Packet::new_checked(&bytes[..]).unwrap();
            let ty = m.msg_type();
            assert_eq!(p.cookie().is_some(), ty.has_cookie());
            assert_eq!(p.valid_ms().is_some(), ty == MessageType::CookieReply);
            assert_eq!(p.flags().is_some(), ty == MessageType::Init);
            assert_eq!(p.seq().is_some(), ty == MessageType::Follow);
            assert_eq!(p.check_ms().is_some(), ty == MessageType::Schedule);
            assert_eq!(p.refresh_ms().is_some(), ty == MessageType::Schedule);
            assert_eq!(p.status().is_some(), ty == MessageType::Ack);
            assert_eq!(
                p.idle_ms().is_some(),
                matches!(ty, MessageType::Check | MessageType::Refresh)
            );
            assert_eq!(p.mac().unwrap()[..], bytes[bytes.len() - 16..]);
        }
        // Unchecked, short or garbage buffers: typed getters return None rather than panic.
        for len in 0..40 {
            let mut buf = vec![0u8; len];
            if len > 3 {
                buf[3] = MessageType::Schedule as u8;
            }
            let p = Packet::new_unchecked(&buf[..]);
            assert_eq!(p.refresh_ms(), None);
            assert_eq!(p.cookie(), None);
        }
    }

    #[test]
    fn each_error() {
        let key = Key::public();
        let init = Message::Init {
            qid: 1,
            cookie: [3; 16],
            reply: true,
        }
        .to_vec(&key);
        let check = |bytes: &[u8], err: WireError| {
            assert_eq!(decode(bytes, &key), Err(err), "{bytes:02x?}");
        };
        check(&[], WireError::Truncated { len: 0 });
        check(&init[..11], WireError::Truncated { len: 11 });
        let mut b = init.clone();
        b[0] = b'W';
        check(&b, WireError::BadMagic);
        let mut b = init.clone();
        b[2] = 2;
        check(&b, WireError::UnsupportedVersion(2));
        for t in [0u8, 10, 0xff] {
            let mut b = init.clone();
            b[3] = t;
            check(&b, WireError::UnknownType(t));
        }
        check(
            &init[..147],
            WireError::BadLength {
                ty: MessageType::Init,
                expected: 148,
                got: 147,
            },
        );
        let mut long = init.clone();
        long.push(0);
        check(
            &long,
            WireError::BadLength {
                ty: MessageType::Init,
                expected: 148,
                got: 149,
            },
        );
        let mut b = init.clone();
        b[131] = 1;
        check(&b, WireError::NonZeroReserved);
        let mut b = init.clone();
        b[28] = 0x03;
        check(&b, WireError::BadFlags);
        let mut ack = Message::Ack {
            qid: 1,
            status: AckStatus::TooLate,
        }
        .to_vec(&key);
        ack[12] = 7;
        let mac = key.mac(&ack[..16]);
        ack[16..].copy_from_slice(&mac);
        check(&ack, WireError::UnknownStatus(7));
        let mut b = init.clone();
        b[147] ^= 1;
        check(&b, WireError::BadMac);
        // Another key.
        assert_eq!(decode(&init, &psk_key()), Err(WireError::BadMac));
        // A valid MAC does not excuse a bad structure: reserved bytes checked first.
        let mut b = init.clone();
        b[100] = 9;
        let mac = key.mac(&b[..132]);
        b[132..].copy_from_slice(&mac);
        check(&b, WireError::NonZeroReserved);
        // Every error has a message.
        assert!(WireError::PskTooShort { len: 3 }
            .to_string()
            .contains("wg genpsk"));
    }

    #[test]
    fn one_bit_flips_are_rejected() {
        for key in [Key::public(), psk_key()] {
            for m in samples() {
                let bytes = m.to_vec(&key);
                for i in 0..bytes.len() {
                    for bit in 0..8 {
                        let mut b = bytes.clone();
                        b[i] ^= 1 << bit;
                        assert!(
                            decode(&b, &key).is_err(),
                            "{} byte {i} bit {bit} accepted",
                            m.msg_type()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn key_derivation_vectors() {
        // Computed independently with Python's hashlib.blake2s.
        let public = Key::public();
        assert_eq!(
            public.0.to_vec(),
            hex("b605621eb0e587fe9c8df695e3c536936ebe1d7ea1943ed86b63f76e93809daa")
        );
        assert!(public.is_public());
        let psk = Key::from_psk(b"  0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            psk.0.to_vec(),
            hex("7e85123c8789c539ad2fc6610edc891db6a28effdb8fcb6f0c1b1f53a40f76dd")
        );
        assert!(!psk.is_public());
        assert_eq!(
            Key::from_psk(b" 0123456789abcde \n").unwrap_err(),
            WireError::PskTooShort { len: 15 }
        );
        assert!(Key::from_psk(b"0123456789abcdef").is_ok());
        // A `wg genpsk` file.
        assert!(Key::from_psk(b"6ZfWZsW3jqFpk3l2pX0Nh3hL5bG2oGQm7S1ccZ2Ch0E=\n").is_ok());
        // Debug never shows the key.
        assert_eq!(format!("{public:?}"), "Key(public)");
        assert_eq!(format!("{psk:?}"), "Key(psk)");
    }

    #[test]
    fn keyed_blake2s_is_rfc7693() {
        // blake2s-kat.txt, keyed, empty input (32-byte output): checks the keyed mode the MAC uses.
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let mut mac = <Blake2sMac<U32> as KeyInit>::new(&key.into());
        Mac::update(&mut mac, b"");
        assert_eq!(
            mac.finalize().into_bytes().to_vec(),
            hex("48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49")
        );
    }

    #[test]
    fn packet_vectors() {
        // Whole packets computed independently with Python's hashlib.
        let m = Message::CookieRequest {
            nonce: 0x0102_0304_0506_0708,
        };
        // Header, 36 zero bytes of padding, MAC.
        let mut expected = hex("776b01010102030405060708");
        expected.extend([0u8; 36]);
        expected.extend(hex("5a758509dd74265d6fcd64e73c928ccc"));
        assert_eq!(m.to_vec(&Key::public()), expected);
        let m = Message::Check {
            qid: 0x1122_3344_5566_7788,
            idle_ms: 150_000,
        };
        assert_eq!(
            m.to_vec(&psk_key()),
            hex("776b01081122334455667788000249f05c87703592aac44c659fcdac9b156821")
        );
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn emit_panics_on_short_buffer() {
        let mut buf = [0u8; 100];
        Message::Init {
            qid: 1,
            cookie: [0; 16],
            reply: false,
        }
        .emit(&Key::public(), &mut buf);
    }

    /// The fuzz target's seed corpus (`fuzz/corpus/probe_wire/seed-<type>`): one valid packet of
    /// each type under the public key. Checks that the files are current; writes them when
    /// `WGKEEP_WRITE_FUZZ_CORPUS=1`. Skipped when the `fuzz` directory is absent.
    #[test]
    fn fuzz_seed_corpus_is_current() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        if !fuzz.is_dir() {
            return;
        }
        let dir = fuzz.join("corpus/probe_wire");
        let write = std::env::var_os("WGKEEP_WRITE_FUZZ_CORPUS").is_some_and(|v| v == "1");
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for m in samples() {
            let path = dir.join(format!("seed-{}", m.msg_type()));
            let bytes = m.to_vec(&Key::public());
            if write {
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; regenerate with WGKEEP_WRITE_FUZZ_CORPUS=1 cargo test -p wgkeep-probe fuzz_seed",
                        path.display()
                    )
                });
                assert_eq!(on_disk, bytes, "{} is stale", path.display());
            }
        }
    }
}
