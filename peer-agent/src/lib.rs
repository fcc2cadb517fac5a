//! peer-agent (being written).
