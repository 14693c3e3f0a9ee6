//! Generates the client from the committed spec (`openapi/artifactstore.json`) with progenitor.

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../openapi/artifactstore.json"
    );
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(path).expect("the committed spec");
    let mut spec: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    // progenitor does not generate multipart/form-data bodies: the form upload
    // (`POST /packages/{id}/files`, what HTML forms send) is left out; `put_file` and upload
    // sessions carry the same bytes.
    let paths = spec["paths"].as_object_mut().expect("paths");
    paths.retain(|_, item| {
        let operations = item.as_object_mut().expect("path item");
        operations.retain(|_, op| {
            op["requestBody"]["content"]
                .get("multipart/form-data")
                .is_none()
        });
        !operations.is_empty()
    });
    let spec: openapiv3::OpenAPI = serde_json::from_value(spec).expect("OpenAPI 3.0");
    // The builder interface: a parameter the spec adds later is one more optional builder
    // method, not one more positional argument that breaks every caller.
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let tokens = progenitor::Generator::new(&settings)
        .generate_tokens(&spec)
        .expect("progenitor generates the client");
    let file = syn::parse2(tokens).expect("Rust");
    let out =
        std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("generated.rs");
    std::fs::write(out, prettyplease::unparse(&file)).expect("written");
}
