//! Userspace WireGuard over its UAPI socket (`/var/run/wireguard/NAME.sock`). (Being written.)
