//! The synthetic FHIR R4 records the dev backend starts with.
//!
//! Three invented patients (names, addresses and identifiers are made up; phone numbers use
//! the fictional 555-01xx range; the identifier system lives under `example.org`), each with
//! one ambulatory encounter, vital signs and laboratory Observations, Conditions,
//! MedicationRequests and one AllergyIntolerance. Codes are real LOINC, SNOMED CT and RxNorm
//! codes so clients and profiles behave as they would on real data. End-to-end tests rely on
//! the ids below: keep them stable.

use serde_json::{json, Value};

/// The resource types the dev backend serves (and the dev issuer advertises scopes for).
pub const RESOURCE_TYPES: [&str; 6] = [
    "Patient",
    "Observation",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Encounter",
];

/// Ids of the seeded patients, in order.
pub const PATIENT_IDS: [&str; 3] = ["pat-1", "pat-2", "pat-3"];

/// When the seeded records were (notionally) last updated; FHIR `instant`.
pub(crate) const SEED_LAST_UPDATED: &str = "2024-05-02T08:00:00Z";

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const UCUM: &str = "http://unitsofmeasure.org";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const MRN_SYSTEM: &str = "https://fhirwall.example.org/dev/mrn";
const ORAL: (&str, &str) = ("26643006", "Oral route");
const INHALED: (&str, &str) = ("447694001", "Respiratory tract route");

/// A laboratory result: LOINC code and display, value, UCUM unit, reference range.
struct Lab {
    slug: &'static str,
    loinc: &'static str,
    display: &'static str,
    value: f64,
    unit: &'static str,
    low: f64,
    high: f64,
}

/// A problem-list condition: SNOMED CT code and display, onset date.
struct Problem {
    snomed: &'static str,
    display: &'static str,
    onset: &'static str,
}

/// An active prescription: RxNorm code and display, patient instructions, SNOMED CT route,
/// and the index of the [`Problem`] it treats.
struct Prescription {
    rxnorm: &'static str,
    display: &'static str,
    dosage: &'static str,
    per_day: u32,
    route: (&'static str, &'static str),
    reason: usize,
}

/// An allergy: SNOMED CT code and display, category, criticality, reaction.
struct Allergy {
    snomed: &'static str,
    display: &'static str,
    category: &'static str,
    criticality: &'static str,
    reaction_snomed: &'static str,
    reaction_display: &'static str,
    severity: &'static str,
}

/// Everything one synthetic patient is built from.
struct Seed {
    n: u32,
    given: &'static [&'static str],
    family: &'static str,
    gender: &'static str,
    birth_date: &'static str,
    street: &'static str,
    city: &'static str,
    state: &'static str,
    postal_code: &'static str,
    visit: &'static str,
    systolic: u32,
    diastolic: u32,
    heart_rate: u32,
    weight_kg: f64,
    labs: &'static [Lab],
    problems: &'static [Problem],
    prescriptions: &'static [Prescription],
    allergy: Allergy,
}

const SEEDS: [Seed; 3] = [
    Seed {
        n: 1,
        given: &["Elena", "Rose"],
        family: "Marsh",
        gender: "female",
        birth_date: "1968-04-12",
        street: "14 Quarry Lane",
        city: "Millbrook",
        state: "OR",
        postal_code: "97000",
        visit: "2024-03-14",
        systolic: 142,
        diastolic: 91,
        heart_rate: 78,
        weight_kg: 81.4,
        labs: &[
            Lab {
                slug: "hba1c",
                loinc: "4548-4",
                display: "Hemoglobin A1c/Hemoglobin.total in Blood",
                value: 7.4,
                unit: "%",
                low: 4.0,
                high: 5.6,
            },
            Lab {
                slug: "glucose",
                loinc: "2345-7",
                display: "Glucose [Mass/volume] in Serum or Plasma",
                value: 148.0,
                unit: "mg/dL",
                low: 70.0,
                high: 99.0,
            },
        ],
        problems: &[
            Problem {
                snomed: "44054006",
                display: "Diabetes mellitus type 2",
                onset: "2016-09-02",
            },
            Problem {
                snomed: "59621000",
                display: "Essential hypertension",
                onset: "2019-01-22",
            },
        ],
        prescriptions: &[
            Prescription {
                rxnorm: "860975",
                display: "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
                dosage: "Take 1 tablet by mouth once daily with the evening meal",
                per_day: 1,
                route: ORAL,
                reason: 0,
            },
            Prescription {
                rxnorm: "314076",
                display: "lisinopril 10 MG Oral Tablet",
                dosage: "Take 1 tablet by mouth once daily",
                per_day: 1,
                route: ORAL,
                reason: 1,
            },
        ],
        allergy: Allergy {
            snomed: "91936005",
            display: "Allergy to penicillin",
            category: "medication",
            criticality: "high",
            reaction_snomed: "126485001",
            reaction_display: "Urticaria",
            severity: "moderate",
        },
    },
    Seed {
        n: 2,
        given: &["Jonah"],
        family: "Whitcombe",
        gender: "male",
        birth_date: "1985-09-30",
        street: "302 Larch Street",
        city: "Eastfield",
        state: "VT",
        postal_code: "05000",
        visit: "2024-02-06",
        systolic: 118,
        diastolic: 76,
        heart_rate: 64,
        weight_kg: 74.2,
        labs: &[
            Lab {
                slug: "hgb",
                loinc: "718-7",
                display: "Hemoglobin [Mass/volume] in Blood",
                value: 14.9,
                unit: "g/dL",
                low: 13.2,
                high: 16.6,
            },
            Lab {
                slug: "chol",
                loinc: "2093-3",
                display: "Cholesterol [Mass/volume] in Serum or Plasma",
                value: 212.0,
                unit: "mg/dL",
                low: 100.0,
                high: 199.0,
            },
        ],
        problems: &[
            Problem {
                snomed: "195967001",
                display: "Asthma",
                onset: "1997-05-11",
            },
            Problem {
                snomed: "55822004",
                display: "Hyperlipidemia",
                onset: "2022-11-03",
            },
        ],
        prescriptions: &[Prescription {
            rxnorm: "745679",
            display: "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            dosage: "Inhale 2 puffs every 4 to 6 hours as needed for wheezing",
            per_day: 4,
            route: INHALED,
            reason: 0,
        }],
        allergy: Allergy {
            snomed: "91935009",
            display: "Allergy to peanuts",
            category: "food",
            criticality: "high",
            reaction_snomed: "39579001",
            reaction_display: "Anaphylaxis",
            severity: "severe",
        },
    },
    Seed {
        n: 3,
        given: &["Priya", "Anne"],
        family: "Castellan",
        gender: "female",
        birth_date: "2001-02-17",
        street: "7 Heron Court",
        city: "Lakeport",
        state: "MN",
        postal_code: "55000",
        visit: "2024-04-22",
        systolic: 112,
        diastolic: 71,
        heart_rate: 70,
        weight_kg: 59.8,
        labs: &[
            Lab {
                slug: "hgb",
                loinc: "718-7",
                display: "Hemoglobin [Mass/volume] in Blood",
                value: 12.8,
                unit: "g/dL",
                low: 11.6,
                high: 15.0,
            },
            Lab {
                slug: "creat",
                loinc: "2160-0",
                display: "Creatinine [Mass/volume] in Serum or Plasma",
                value: 0.78,
                unit: "mg/dL",
                low: 0.59,
                high: 1.04,
            },
        ],
        problems: &[Problem {
            snomed: "367498001",
            display: "Seasonal allergic rhinitis",
            onset: "2012-04-30",
        }],
        prescriptions: &[Prescription {
            rxnorm: "665078",
            display: "Loratadine 5 MG Chewable Tablet",
            dosage: "Chew 2 tablets by mouth once daily during pollen season",
            per_day: 2,
            route: ORAL,
            reason: 0,
        }],
        allergy: Allergy {
            snomed: "418689008",
            display: "Allergy to grass pollen",
            category: "environment",
            criticality: "low",
            reaction_snomed: "64531003",
            reaction_display: "Nasal discharge",
            severity: "mild",
        },
    },
];

/// Every seeded resource, patients first. Each carries `resourceType` and `id`; `meta` is
/// added by the store.
pub fn resources() -> Vec<Value> {
    let mut out = Vec::new();
    for seed in &SEEDS {
        out.extend(patient_record(seed));
    }
    out
}

/// The records of one patient.
fn patient_record(s: &Seed) -> Vec<Value> {
    let pid = format!("pat-{}", s.n);
    let subject = json!({ "reference": format!("Patient/{pid}") });
    let enc_id = format!("enc-{}", s.n);
    let encounter = json!({ "reference": format!("Encounter/{enc_id}") });
    let start = format!("{}T09:00:00Z", s.visit);
    let end = format!("{}T09:40:00Z", s.visit);
    let taken = format!("{}T09:12:00Z", s.visit);
    let resulted = format!("{}T15:30:00Z", s.visit);

    let mut out = vec![
        json!({
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{
                "use": "usual",
                "type": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "MR",
                    "display": "Medical record number"
                }]},
                "system": MRN_SYSTEM,
                "value": format!("DEV-{:04}", s.n)
            }],
            "active": true,
            "name": [{ "use": "official", "family": s.family, "given": s.given }],
            "telecom": [{ "system": "phone", "value": format!("555-01{:02}", s.n), "use": "home" }],
            "gender": s.gender,
            "birthDate": s.birth_date,
            "address": [{
                "use": "home",
                "line": [s.street],
                "city": s.city,
                "state": s.state,
                "postalCode": s.postal_code,
                "country": "US"
            }]
        }),
        json!({
            "resourceType": "Encounter",
            "id": enc_id,
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
                "display": "ambulatory"
            },
            "type": [{ "coding": [{
                "system": SNOMED,
                "code": "185349003",
                "display": "Encounter for check up (procedure)"
            }]}],
            "subject": subject,
            "period": { "start": start, "end": end },
            "serviceProvider": { "display": "fhirwall Dev Clinic" }
        }),
    ];

    // Vital signs follow the R4 vital signs profiles (bp, heartrate, bodyweight).
    out.push(json!({
        "resourceType": "Observation",
        "id": format!("obs-{}-bp", s.n),
        "meta": { "profile": ["http://hl7.org/fhir/StructureDefinition/bp"] },
        "status": "final",
        "category": [category("vital-signs", "Vital Signs")],
        "code": coded(LOINC, "85354-9", "Blood pressure panel with all children optional"),
        "subject": subject,
        "encounter": encounter,
        "effectiveDateTime": taken,
        "component": [
            {
                "code": coded(LOINC, "8480-6", "Systolic blood pressure"),
                "valueQuantity": quantity(f64::from(s.systolic), "mm[Hg]")
            },
            {
                "code": coded(LOINC, "8462-4", "Diastolic blood pressure"),
                "valueQuantity": quantity(f64::from(s.diastolic), "mm[Hg]")
            }
        ]
    }));
    out.push(vital(
        s,
        "hr",
        "heartrate",
        "8867-4",
        "Heart rate",
        f64::from(s.heart_rate),
        "/min",
        &taken,
    ));
    out.push(vital(
        s,
        "weight",
        "bodyweight",
        "29463-7",
        "Body weight",
        s.weight_kg,
        "kg",
        &taken,
    ));
    for lab in s.labs {
        out.push(json!({
            "resourceType": "Observation",
            "id": format!("obs-{}-{}", s.n, lab.slug),
            "status": "final",
            "category": [category("laboratory", "Laboratory")],
            "code": coded(LOINC, lab.loinc, lab.display),
            "subject": subject,
            "encounter": encounter,
            "effectiveDateTime": taken,
            "issued": resulted,
            "valueQuantity": quantity(lab.value, lab.unit),
            "referenceRange": [{ "low": quantity(lab.low, lab.unit), "high": quantity(lab.high, lab.unit) }]
        }));
    }

    for (i, p) in s.problems.iter().enumerate() {
        out.push(json!({
            "resourceType": "Condition",
            "id": format!("cond-{}-{}", s.n, i + 1),
            "clinicalStatus": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
                "display": "Active"
            }]},
            "verificationStatus": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": "confirmed",
                "display": "Confirmed"
            }]},
            "category": [{ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "problem-list-item",
                "display": "Problem List Item"
            }]}],
            "code": coded(SNOMED, p.snomed, p.display),
            "subject": subject,
            "onsetDateTime": p.onset,
            "recordedDate": start
        }));
    }

    for (i, rx) in s.prescriptions.iter().enumerate() {
        out.push(json!({
            "resourceType": "MedicationRequest",
            "id": format!("medrx-{}-{}", s.n, i + 1),
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": coded(RXNORM, rx.rxnorm, rx.display),
            "subject": subject,
            "encounter": encounter,
            "authoredOn": s.visit,
            "requester": { "display": "Dr. Sam Devlin (synthetic)" },
            "reasonReference": [{ "reference": format!("Condition/cond-{}-{}", s.n, rx.reason + 1) }],
            "dosageInstruction": [{
                "text": rx.dosage,
                "timing": { "repeat": { "frequency": rx.per_day, "period": 1, "periodUnit": "d" } },
                "route": coded(SNOMED, rx.route.0, rx.route.1)
            }]
        }));
    }
    let a = &s.allergy;
    out.push(json!({
        "resourceType": "AllergyIntolerance",
        "id": format!("allergy-{}", s.n),
        "clinicalStatus": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            "code": "active",
            "display": "Active"
        }]},
        "verificationStatus": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "code": "confirmed",
            "display": "Confirmed"
        }]},
        "type": "allergy",
        "category": [a.category],
        "criticality": a.criticality,
        "code": coded(SNOMED, a.snomed, a.display),
        "patient": subject,
        "recordedDate": s.visit,
        "reaction": [{
            "manifestation": [coded(SNOMED, a.reaction_snomed, a.reaction_display)],
            "severity": a.severity
        }]
    }));
    out
}

/// A single-value vital sign following the matching R4 profile.
#[allow(clippy::too_many_arguments)] // a table row, clearer inline than as a struct
fn vital(
    s: &Seed,
    slug: &str,
    profile: &str,
    loinc: &str,
    display: &str,
    value: f64,
    unit: &str,
    taken: &str,
) -> Value {
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{}-{slug}", s.n),
        "meta": { "profile": [format!("http://hl7.org/fhir/StructureDefinition/{profile}")] },
        "status": "final",
        "category": [category("vital-signs", "Vital Signs")],
        "code": coded(LOINC, loinc, display),
        "subject": { "reference": format!("Patient/pat-{}", s.n) },
        "encounter": { "reference": format!("Encounter/enc-{}", s.n) },
        "effectiveDateTime": taken,
        "valueQuantity": quantity(value, unit)
    })
}

fn category(code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": OBS_CATEGORY, "code": code, "display": display }] })
}

fn coded(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code, "display": display }], "text": display })
}

/// A UCUM quantity; whole numbers are written without a fraction (`142`, not `142.0`).
fn quantity(value: f64, unit: &str) -> Value {
    let number = if value.fract() == 0.0 && value.abs() < 1e9 {
        json!(value as i64)
    } else {
        json!(value)
    };
    json!({ "value": number, "unit": unit, "system": UCUM, "code": unit })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_unique_per_type_and_valid_fhir_ids() {
        let mut seen = HashSet::new();
        for r in resources() {
            let ty = r["resourceType"].as_str().unwrap().to_owned();
            let id = r["id"].as_str().unwrap().to_owned();
            assert!(
                id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "{id}"
            );
            assert!(seen.insert((ty, id)), "duplicate id");
        }
    }

    #[test]
    fn every_clinical_resource_points_at_a_seeded_patient() {
        let patients: HashSet<String> =
            PATIENT_IDS.iter().map(|p| format!("Patient/{p}")).collect();
        for r in resources() {
            let ty = r["resourceType"].as_str().unwrap();
            let field = match ty {
                "Patient" => continue,
                "AllergyIntolerance" => "patient",
                _ => "subject",
            };
            let reference = r[field]["reference"].as_str().unwrap();
            assert!(patients.contains(reference), "{ty} -> {reference}");
        }
    }

    #[test]
    fn each_patient_has_vital_signs_and_laboratory_observations() {
        let all = resources();
        for pid in PATIENT_IDS {
            let subject = format!("Patient/{pid}");
            let cats: HashSet<&str> = all
                .iter()
                .filter(|r| {
                    r["resourceType"] == "Observation"
                        && r["subject"]["reference"] == subject.as_str()
                })
                .flat_map(|r| r["category"].as_array().unwrap())
                .map(|c| {
                    assert_eq!(c["coding"][0]["system"], OBS_CATEGORY);
                    c["coding"][0]["code"].as_str().unwrap()
                })
                .collect();
            assert_eq!(cats, HashSet::from(["vital-signs", "laboratory"]), "{pid}");
            for ty in [
                "Condition",
                "MedicationRequest",
                "AllergyIntolerance",
                "Encounter",
            ] {
                assert!(all.iter().any(|r| r["resourceType"] == ty
                    && (r["subject"]["reference"] == subject.as_str()
                        || r["patient"]["reference"] == subject.as_str())));
            }
        }
    }

    #[test]
    fn whole_number_quantities_are_written_as_integers() {
        assert_eq!(quantity(142.0, "mm[Hg]")["value"].to_string(), "142");
        assert_eq!(quantity(7.4, "%")["value"].to_string(), "7.4");
    }
}
