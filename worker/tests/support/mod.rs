//! Shared test support: the store conformance suite, the fencing scenario, and a SeaweedFS
//! harness.

#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod broker;
pub mod seaweedfs;
pub mod suites;
