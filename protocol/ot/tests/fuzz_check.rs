//! `fuzzing::check` over pseudo-random inputs from a fixed-seed xorshift, so that stable
//! `cargo test` runs the fuzz properties too (and reproduces exactly).

use edge_ws_ot::fuzzing::check;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn fuzz_check_pseudo_random_inputs() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..4000 {
        let len = (rng.next() % 160) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&data);
    }
}

#[test]
fn fuzz_check_edge_inputs() {
    check(&[]);
    check(&[0xff; 64]);
    check(&[0; 64]);
    // Valid JSON operations in the tail go through the "malformed input" path as well.
    for tail in [
        &br#"[1,"x",-1]"#[..],
        b"[0]",
        b"[1.5]",
        b"[{}]",
        b"\"x\"",
        b"[9007199254740991]",
        b"[-3,\"\xf0\x9f\x98\x80\"]",
    ] {
        let mut data = vec![3, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend_from_slice(tail);
        check(&data);
    }
}
