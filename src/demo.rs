//! `fieldlink demo`: in-process peers around the real agent.
