//! Wiring: spawns the bus tasks and the uplink, owns shutdown. No protocol code.
