//! auth-svc (being written).
