//! The integration tests: one binary, one module per area. Every test drives the real
//! `portico` binary; where nginx is installed, the same input also goes through `nginx -t`
//! and the two verdicts are compared.

mod corpus;
mod differential;
mod files;
mod golden;
mod lint;
mod proxy;
mod reload;
mod routing;
mod serve;
mod support;
mod tls;
