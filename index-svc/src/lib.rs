//! index-svc (being written).
