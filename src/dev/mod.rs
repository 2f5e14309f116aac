//! `fhirwall dev`: the gateway with a sample FHIR backend and a development token issuer,
//! all on loopback. (Stub: implemented by the dev work.)
