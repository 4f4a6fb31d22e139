//! The README's deployment recipes as the tests that run them read them: the fenced blocks of a
//! "### …" section under "## Deployment", keyed by their first line (the file they belong in,
//! e.g. `# /etc/postfix/main.cf`). A README edit that breaks a recipe fails the test that gives
//! it to the real MTA.

/// The fenced blocks of the README's `### {section}` under "## Deployment", each as its first
/// line and all its lines.
pub fn deployment_blocks(section: &str) -> Vec<(String, Vec<String>)> {
    let readme = include_str!("../../README.md");
    let deployment = readme.split("\n## Deployment\n").nth(1).expect("README has a \"## Deployment\" section");
    let deployment = deployment.split("\n## ").next().unwrap_or(deployment);
    let heading = format!("\n### {section}\n");
    let text = deployment.split(&heading).nth(1).unwrap_or_else(|| panic!("{heading:?} under \"## Deployment\""));
    let text = text.split("\n### ").next().unwrap_or(text);
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(block) => blocks.push((block.first().cloned().unwrap_or_default(), block)),
                None => current = Some(Vec::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push(line.to_string());
        }
    }
    blocks
}

/// The block of `### {section}` whose first line is `first_line`.
pub fn deployment_block(section: &str, first_line: &str) -> Vec<String> {
    deployment_blocks(section)
        .into_iter()
        .find(|(first, _)| first == first_line)
        .unwrap_or_else(|| panic!("README's {section} recipe has no block starting {first_line:?}"))
        .1
}
