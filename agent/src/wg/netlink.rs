//! Kernel WireGuard over generic netlink. (Being written.)
