//! RFC 6750 bearer credentials. (Stub: implemented by the auth work.)
