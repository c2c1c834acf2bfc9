//! systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING); a no-op without NOTIFY_SOCKET.
