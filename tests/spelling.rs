//! Spelling correction (inference/tokenize.rs) against its independent oracle, the Python rule in
//! training/moe_training/spelling.py, on the shipped lexicon and misspelt val titles; and where a
//! lexicon may be named.

mod common;

use moe_core::expert::Expert;
use moe_core::inference::{ExecutorPool, Speller};

const TRUNK: &str = "trunks/minilm-l6-kd19-int8-d87345db0b8b";

/// One edit (drop, double, swap, replace) in every third word of 4+ letters, chosen by position so
/// the test needs no random source; plus Title Case, ALL CAPS and punctuation variants.
fn misspelt(titles: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, t) in titles.iter().enumerate() {
        let words: Vec<String> = t
            .split(' ')
            .enumerate()
            .map(|(k, w)| {
                let mut c: Vec<char> = w.chars().collect();
                if c.len() < 4 || (i + k) % 3 != 0 {
                    return w.to_string();
                }
                let at = (i * 7 + k) % (c.len() - 1);
                match (i + k) % 4 {
                    0 => c.swap(at, at + 1),
                    1 => {
                        c.remove(at);
                    }
                    2 => c.insert(at, c[at]),
                    _ => c[at] = (b'a' + ((i + 3 * k) % 26) as u8) as char,
                }
                c.into_iter().collect()
            })
            .collect();
        let typo = words.join(" ");
        let title_case: Vec<String> = words
            .iter()
            .map(|w| w.chars().next().map(|f| f.to_uppercase().chain(w.chars().skip(1)).collect()).unwrap_or_default())
            .collect();
        out.push((t.clone(), typo.clone()));
        out.push((t.clone(), format!("{}?!", title_case.join(" "))));
        out.push((t.clone(), format!("Q: {} — {}", typo.to_uppercase(), typo)));
    }
    out.push((String::new(), "naïve café déjà-vu 25d x2 ÆØÅ  \t\n end".into()));
    out
}

#[test]
fn correction_matches_the_python_oracle_on_misspelt_val_titles() {
    let lexicon = common::repo().join("models").join(TRUNK).join("lexicon.txt");
    let speller = Speller::load(&lexicon, "").unwrap();
    let titles = common::data().read("val").unwrap().texts;
    let cases = misspelt(&titles);
    let inputs: Vec<&str> = cases.iter().map(|(_, m)| m.as_str()).collect();
    let mut child = std::process::Command::new(common::python())
        .current_dir(common::repo().join("training"))
        .args(["-m", "moe_training", "spell"])
        .arg(&lexicon)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the Python oracle (scripts/setup.sh installs it)");
    serde_json::to_writer(child.stdin.take().unwrap(), &inputs).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let want: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(want.len(), inputs.len());
    let (mut changed, mut restored, mut misspelt_typos) = (0, 0, 0);
    for (k, ((clean, input), want)) in cases.iter().zip(&want).enumerate() {
        let got = speller.correct(input);
        assert_eq!(&got, want, "input {input:?}");
        changed += usize::from(got != input.as_str());
        if k % 3 == 0 && input != clean {
            misspelt_typos += 1;
            restored += usize::from(got == clean.as_str());
        }
    }
    // Not vacuous: the oracle comparison covered many real corrections, and they mostly restore.
    assert!(changed > cases.len() / 4, "{changed} of {} changed", cases.len());
    assert!(restored * 10 > misspelt_typos * 7, "{restored} of {misspelt_typos} misspelt titles restored");
}

#[test]
fn a_head_names_no_lexicon_of_its_own() {
    let root = common::copy_root(&common::default_models(), "head-lexicon");
    let bundle = "travel--kd19-logreg";
    common::edit_json(&root.join(bundle).join("card.json"), |c| {
        c["spelling"] = serde_json::json!({"file": "lexicon.txt", "sha256": "00"})
    });
    let err = Expert::load(&ExecutorPool::default(), &common::runtime(), &root, bundle, true).err().unwrap();
    assert!(err.to_string().contains("its trunk's"), "{err}");
    // The trunk's lexicon is checked like its graph.
    let root2 = common::copy_root(&common::default_models(), "trunk-lexicon");
    common::replace_file(&root2.join(TRUNK).join("lexicon.txt"), b"how\t1\n");
    let err = Expert::load(&ExecutorPool::default(), &common::runtime(), &root2, bundle, true).err().unwrap();
    assert!(err.to_string().contains("sha256 mismatch") && err.to_string().contains("lexicon.txt"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(root2).unwrap();
}

/// With the lexicon (default) a misspelt title gets exactly the answer of its corrected text; with
/// `--spelling false` the lexicon is ignored and the misspelt title is answered as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_the_corrected_text_unless_spelling_is_off() {
    let (misspelt, fixed) = ("How to Pakc a Suitcsae for a lnog trip", "How to Pack a Suitcase for a long trip");
    let answer = |spelling: bool, text: &'static str| async move {
        let runtime = moe_core::config::RuntimeConfig { spelling, ..common::runtime() };
        let limits = moe_core::config::Limits::default();
        let core = common::loaded_core_with(&common::default_models(), "spelling", runtime, limits).await;
        let words = core.snapshot().unwrap().experts[0].tokenizer.speller.as_ref().map(|s| s.len());
        assert_eq!(words.is_some(), spelling);
        let (results, _) = core.classify(vec![text.to_string()]).await.unwrap();
        results[0].experts.iter().map(|e| e.probability).collect::<Vec<f32>>()
    };
    let on = answer(true, misspelt).await;
    assert_eq!(on, answer(true, fixed).await);
    assert_eq!(on, answer(false, fixed).await);
    let off = answer(false, misspelt).await;
    let moved = on.iter().zip(&off).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.01, "the typos should move some probability without correction: {moved}");
}
