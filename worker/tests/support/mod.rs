//! Shared test support: the store conformance suite, the fencing scenario, and harnesses for
//! the real servers the tests start (the broker nisshi, SeaweedFS) and for promtool.

#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod broker;
pub mod promtool;
pub mod seaweedfs;
pub mod suites;
pub mod workers;
