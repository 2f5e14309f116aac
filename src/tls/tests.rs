//! Certificate loading and reload: files minted with rcgen in a temp folder.
