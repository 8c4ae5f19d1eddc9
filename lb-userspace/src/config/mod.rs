//! TOML configuration: schema, validation with file:line:col errors, diff between two configs.
