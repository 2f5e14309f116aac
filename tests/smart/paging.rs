// Paging (issue 3, SMART-SEMANTICS 13 A22, smart-api.md "Paging"): a next-page link at the
// base (`?_getpages=...`) carries no resource type; fhirwall remembers the links it saw in a
// search response and authorizes a page request exactly as the search that produced it, for
// the same token; an unknown or foreign page link is refused, never run as a system search.

use crate::runner::*;

const P123: &str = "patient/Observation.rs";

/// The page-link cases that need no earlier search.
pub fn cases() -> Vec<Case> {
    vec![
        case(
            "an unknown page link is refused",
            "smart-api.md paging: a paging parameter not remembered -> 403",
        )
        .scopes("user/*.rs")
        .get("?_getpages=forged-token&_getpagesoffset=0&_count=1")
        .deny_with(&[403], Challenge::Any),
        case(
            "an unknown page link is refused under patient/",
            "smart-api.md paging",
        )
        .scopes(P123)
        .patient("123")
        .get("?_getpages=forged-token&_getpagesoffset=1&_count=1")
        .deny_with(&[403], Challenge::Any),
        case("a page link without a token", "RFC 6750 §3.1")
            .get("?_getpages=forged-token")
            .deny_with(&[401], Challenge::Bare),
    ]
}

/// The `next` link of a searchset, as a target path+query at the gateway.
fn next_target(got: &Exchange) -> Result<String, String> {
    let body = got.json();
    let url = body["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .ok_or_else(|| format!("no next link in {}", got.text()))?
        .to_owned();
    // Absolute URL at the gateway's host (the backend builds links from the Host header).
    let rest = url
        .split_once("://")
        .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_owned()))
        .ok_or_else(|| format!("next link {url:?} is not an absolute URL"))?;
    Ok(rest)
}

/// Runs a search with `_count=1`, then follows its next link as `follower`.
async fn follow(table: &Table, search: Case, follower: Case) -> Result<Exchange, String> {
    table.backend.clear_requests();
    let first = table.send(&search).await?;
    if first.status != 200 {
        return Err(format!(
            "the first page was answered {}: {}",
            first.status,
            first.text()
        ));
    }
    let target = next_target(&first)?;
    table.backend.clear_requests();
    table.send_target(&follower, &target).await
}

#[tokio::test]
async fn paging_table_conforms() {
    let table = Table::start("paging").await;
    let mut failures = Vec::new();
    let all = cases();
    let count = all.len() + 4;
    for c in &all {
        if let Err(why) = table.run_case(c).await {
            failures.push(format!("paging/{} [{}]: {why}", c.name, c.rule));
        }
    }

    // 1. A link from an allowed search, followed with the same token: allowed, and answered
    //    by the backend with the next page.
    let rule =
        "issue 3 paging: a page request is authorized exactly as the search that produced it";
    let search = case("search", rule)
        .scopes(P123)
        .patient("123")
        .get("/Observation?patient=123&_count=1");
    match follow(&table, search.clone(), search.clone()).await {
        Ok(got) if got.status == 200 && got.json()["type"] == "searchset" => {
            let leaked = got.text().contains("Patient/456");
            if leaked {
                failures.push(format!(
                    "paging/a followed page holds only the patient's data [{rule}]: {}",
                    got.text()
                ));
            }
        }
        Ok(got) => failures.push(format!(
            "paging/a next link from an allowed search is followed [{rule}]: got {} {}",
            got.status,
            got.text()
        )),
        Err(why) => failures.push(format!(
            "paging/a next link from an allowed search is followed [{rule}]: {why}"
        )),
    }

    // 2. The same link followed by another patient's token: refused (remembered per token).
    let rule = "smart-api.md paging: links are remembered with the principal's token";
    let other = case("other", rule)
        .scopes(P123)
        .patient("456")
        .get("/Observation?patient=456");
    match follow(&table, search.clone(), other).await {
        Ok(got) if got.status == 403 => {}
        Ok(got) => failures.push(format!(
            "paging/another token cannot follow the link [{rule}]: got {} {}",
            got.status,
            got.text()
        )),
        Err(why) => failures.push(format!(
            "paging/another token cannot follow the link [{rule}]: {why}"
        )),
    }
    if table
        .backend
        .requests()
        .iter()
        .any(|r| r.query.as_deref().is_some_and(|q| q.contains("_getpages")))
    {
        failures.push(
            "paging/another token cannot follow the link: the page request reached the backend"
                .into(),
        );
    }

    // 3. A user/ search's link followed: allowed.
    let rule = "issue 3 paging: never refused for a legitimate app";
    let user = case("user", rule)
        .scopes("user/Observation.s")
        .get("/Observation?code=1234-5&_count=2");
    match follow(&table, user.clone(), user).await {
        Ok(got) if got.status == 200 => {}
        Ok(got) => failures.push(format!(
            "paging/a user search's link is followed [{rule}]: got {} {}",
            got.status,
            got.text()
        )),
        Err(why) => failures.push(format!(
            "paging/a user search's link is followed [{rule}]: {why}"
        )),
    }

    // 4. A page of a search whose later page holds another patient's resource is still
    //    checked: a patient/ compartment search only ever pages through the patient's data,
    //    so here the follow-up with a token that lost the scope must be refused.
    let rule = "issue 3 paging: same rules with the current principal";
    let narrower = case("narrower", rule)
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Observation?patient=123");
    match follow(&table, search, narrower).await {
        Ok(got) if got.status == 403 => {}
        Ok(got) => failures.push(format!(
            "paging/a token without the search scope cannot page [{rule}]: got {} {}",
            got.status,
            got.text()
        )),
        Err(why) => failures.push(format!(
            "paging/a token without the search scope cannot page [{rule}]: {why}"
        )),
    }

    report("paging", count, failures);
}
