//! `#[evmesh_plugin::filter]` and `#[evmesh_plugin::transform]`: turn one function over an
//! event into a WASM component exporting the `evmesh:plugin` batch world. The bindings are
//! generated inside the plugin crate (one world each, as the component model requires), from the
//! WIT text embedded here, through the SDK's re-exported `wit_bindgen`. No `syn`: the macro only
//! needs the function's name.

use proc_macro::{TokenStream, TokenTree};

const WIT: &str = include_str!("../../wit/evmesh-plugin.wit");

fn fn_name(item: &TokenStream) -> Result<String, String> {
    let mut after_fn = false;
    for t in item.clone() {
        match t {
            TokenTree::Ident(i) if after_fn => return Ok(i.to_string()),
            TokenTree::Ident(i) if i.to_string() == "fn" => after_fn = true,
            _ => {}
        }
    }
    Err("#[evmesh_plugin::filter] / #[evmesh_plugin::transform] go on a function".into())
}

fn expand(item: TokenStream, world: &str, export: &str, body: &str) -> TokenStream {
    let name = match fn_name(&item) {
        Ok(n) => n,
        Err(e) => {
            return format!("compile_error!({e:?});")
                .parse()
                .unwrap_or_default()
        }
    };
    let generated = format!(
        r#"
#[allow(unsafe_code, clippy::all, dead_code)]
mod __evmesh_plugin_bindings {{
    ::evmesh_plugin::wit_bindgen::generate!({{
        inline: {wit:?},
        world: "evmesh:plugin/{world}",
        runtime_path: "::evmesh_plugin::wit_bindgen::rt",
    }});
}}

struct __EvmeshPlugin;

fn __evmesh_plugin_log(level: ::evmesh_plugin::Level, message: &str) {{
    use __evmesh_plugin_bindings::evmesh::plugin::host;
    let l = match level {{
        ::evmesh_plugin::Level::Trace => host::Level::Trace,
        ::evmesh_plugin::Level::Debug => host::Level::Debug,
        ::evmesh_plugin::Level::Info => host::Level::Info,
        ::evmesh_plugin::Level::Warn => host::Level::Warn,
        ::evmesh_plugin::Level::Error => host::Level::Error,
    }};
    host::log(l, message);
}}

fn __evmesh_plugin_counter(name: &str, delta: u64) {{
    __evmesh_plugin_bindings::evmesh::plugin::host::counter(name, delta);
}}

impl __evmesh_plugin_bindings::Guest for __EvmeshPlugin {{
    fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>) -> ::std::result::Result<(), ::std::string::String> {{
        ::evmesh_plugin::__private::init(config, __evmesh_plugin_log, __evmesh_plugin_counter)
    }}

    fn {export}(frame: ::std::vec::Vec<u8>) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {{
        {body}
    }}
}}

__evmesh_plugin_bindings::export!(__EvmeshPlugin with_types_in __evmesh_plugin_bindings);
"#,
        wit = WIT,
        body = body.replace("USER_FN", &name),
    );
    let mut out = item;
    match generated.parse::<TokenStream>() {
        Ok(g) => out.extend(g),
        Err(e) => {
            return format!("compile_error!({:?});", e.to_string())
                .parse()
                .unwrap_or_default();
        }
    }
    out
}

/// `#[evmesh_plugin::filter] fn keep(e: &EventRef) -> bool`
#[proc_macro_attribute]
pub fn filter(_attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(
        item,
        "filter",
        "filter_batch",
        "::evmesh_plugin::__private::filter_batch(&frame, USER_FN)",
    )
}

/// `#[evmesh_plugin::transform] fn t(e: &EventRef) -> impl IntoOutputs` (an `Event`,
/// `Option<Event>`, `Vec<Event>`, `Vec<Routed>`, or a `Result` of one).
#[proc_macro_attribute]
pub fn transform(_attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(
        item,
        "transform",
        "transform_batch",
        "::evmesh_plugin::__private::transform_batch(&frame, USER_FN)",
    )
}
