//! The compiled route trie. (Stub: implemented by the policy work.)
