//! The tunnel-packet follow-up. (Being written.)
