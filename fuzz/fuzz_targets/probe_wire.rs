//! Fuzzes the probe's wire format (`wgkeep_probe::wire`) on arbitrary datagrams:
//!
//! - `decode` with the public key and with a PSK key never panics, and whatever it accepts
//!   re-emits to the identical bytes;
//! - `Packet::new_checked` and every getter never panic, and a structurally valid packet parses
//!   and re-emits to the same bytes up to the MAC (random inputs almost never carry a valid MAC,
//!   so this is what reaches the parser);
//! - the typed getters of an unchecked packet never panic either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgkeep_probe::wire::{self, Key, Message, Packet, MAC_LEN};

fn getters<T: AsRef<[u8]>>(p: &Packet<T>) {
    let _ = p.msg_type();
    let _ = p.mac();
    let _ = p.cookie();
    let _ = p.valid_ms();
    let _ = p.flags();
    let _ = p.reply();
    let _ = p.seq();
    let _ = p.check_ms();
    let _ = p.refresh_ms();
    let _ = p.status();
    let _ = p.idle_ms();
    let _ = p.len();
    let _ = p.is_empty();
}

fuzz_target!(|data: &[u8]| {
    let public = Key::public();
    let psk = Key::from_psk(b"wgkeep fuzzing psk, not a secret").unwrap();
    for key in [&public, &psk] {
        if let Ok(msg) = wire::decode(data, key) {
            assert_eq!(
                msg.to_vec(key),
                data,
                "{msg:?} does not re-emit identically"
            );
        }
    }

    // Unchecked: typed getters must not panic on any buffer.
    getters(&Packet::new_unchecked(data));

    if let Ok(p) = Packet::new_checked(data) {
        getters(&p);
        let _ = p.id();
        let _ = p.verify(&public);
        let _ = p.verify(&psk);
        let msg = Message::parse(&p).expect("a checked packet parses");
        assert_eq!(msg.msg_type(), p.msg_type().unwrap());
        let again = msg.to_vec(&public);
        let n = data.len() - MAC_LEN;
        assert_eq!(
            &again[..n],
            &data[..n],
            "{msg:?} does not re-emit identically"
        );
    } else {
        assert!(Message::parse(&Packet::new_unchecked(data)).is_err());
    }
});
