//! FHIR R4 (4.0.1) facts the policy needs: the resource type names and the patient
//! compartment.
//!
//! The lists are embedded rather than loaded so that a scope naming a type that does not exist
//! in R4 is refused the same way everywhere, with no file to go missing.

use std::fmt;

/// Every concrete resource type of FHIR R4 (4.0.1), sorted (byte order) for binary search.
///
/// Source: the `ResourceType` code system of 4.0.1 (`profiles-resources.json`), as generated
/// into HAPI's `org.hl7.fhir.r4.model.ResourceType` ("Generated ... for FHIR v4.0.1"). It has
/// 146 entries; the abstract `Resource` and `DomainResource` are not resource types a scope can
/// name, and R4B/R5-only types (`SubscriptionTopic`, `Citation`, ...) are not R4.
pub const RESOURCE_TYPES: [&str; 146] = [
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// The resource types of the R4 patient compartment (`CompartmentDefinition/patient`, 4.0.1):
/// 67 types, sorted. See SMART-SEMANTICS §3.2.
const PATIENT_COMPARTMENT: [&str; 67] = [
    "Account",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EnrollmentRequest",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "Group",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "Invoice",
    "List",
    "MeasureReport",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Observation",
    "Patient",
    "Person",
    "Procedure",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchSubject",
    "RiskAssessment",
    "Schedule",
    "ServiceRequest",
    "Specimen",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "VisionPrescription",
];

/// A concrete FHIR R4 resource type, e.g. `Observation`. Case-sensitive: `observation` is
/// not a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(u8);

// === impl ResourceType ===

impl ResourceType {
    /// The type with this exact name, if R4 defines it.
    pub fn from_name(name: &str) -> Option<ResourceType> {
        RESOURCE_TYPES
            .binary_search(&name)
            .ok()
            .map(|i| ResourceType(i as u8))
    }

    /// The type's name, e.g. `"Observation"`.
    pub fn name(self) -> &'static str {
        RESOURCE_TYPES[usize::from(self.0)]
    }

    /// True when the type belongs to the R4 patient compartment, so a `patient/` scope on it
    /// is about one patient's data.
    pub fn in_patient_compartment(self) -> bool {
        PATIENT_COMPARTMENT.binary_search(&self.name()).is_ok()
    }

    /// Every R4 resource type, in name order.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        (0..RESOURCE_TYPES.len()).map(|i| ResourceType(i as u8))
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_lists_are_sorted_so_binary_search_works() {
        assert!(RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_compartment_type_is_an_r4_resource_type() {
        for name in PATIENT_COMPARTMENT {
            assert!(ResourceType::from_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn names_round_trip() {
        for t in ResourceType::all() {
            assert_eq!(ResourceType::from_name(t.name()), Some(t));
        }
        assert_eq!(ResourceType::all().count(), 146);
    }

    #[test]
    fn type_names_are_case_sensitive_and_r4_only() {
        assert!(ResourceType::from_name("Observation").is_some());
        assert!(ResourceType::from_name("VisionPrescription").is_some());
        assert!(ResourceType::from_name("Account").is_some());
        for bad in [
            "observation",
            "OBSERVATION",
            "Observations",
            "Resource",
            "DomainResource",
            "SubscriptionTopic",
            "Citation",
            "DeviceUsage",
            "",
            "*",
        ] {
            assert!(ResourceType::from_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn compartment_membership_follows_the_compartment_definition() {
        let t = |n| ResourceType::from_name(n).unwrap();
        assert!(t("Patient").in_patient_compartment());
        assert!(t("Observation").in_patient_compartment());
        assert!(t("Group").in_patient_compartment());
        assert!(!t("Practitioner").in_patient_compartment());
        assert!(!t("Medication").in_patient_compartment());
        assert!(!t("Organization").in_patient_compartment());
        let n = ResourceType::all()
            .filter(|t| t.in_patient_compartment())
            .count();
        assert_eq!(n, 67);
    }
}
