//! Administrators, their sessions and API keys (filled in below).
