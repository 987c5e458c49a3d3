//! Resolving and loading the model, tokenizer and chat template.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_chat::{ChatMessage, ChatTemplate};
use kiln_cuda::{CudaBackend, CudaLoadOptions, DriverProbe, PtxCache, ResolvedDevice};
use kiln_engine::{Engine, EngineConfig};
use kiln_model::{LoadOptions, Model, ModelBackend};
use kiln_tokenizer::Tokenizer;

use crate::ModelArgs;

pub struct Loaded {
    pub path: PathBuf,
    pub model: Arc<dyn ModelBackend>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
}

/// The model named by `--model`, else the default one (fetched on first use).
pub fn resolve(args: &ModelArgs) -> Result<PathBuf> {
    Ok(kiln_hub::resolve_model(args.model.clone(), true)?)
}

pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = resolve(args)?;
    let started = std::time::Instant::now();
    let mut file = std::fs::File::open(&path).with_context(|| format!("cannot open model file {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    let model: Arc<dyn ModelBackend> = match kiln_cuda::resolve(args.device, &DriverProbe)? {
        ResolvedDevice::Cuda(ordinal) => {
            if args.kv_cache_type.is_some_and(|t| t != kiln_model::KvType::F16) {
                anyhow::bail!("--kv-cache-type: the CUDA engine stores keys and values as f16");
            }
            let cache = PtxCache::default_location().context("no cache folder for compiled CUDA kernels")?;
            let options = CudaLoadOptions {
                max_context: args.max_context,
                memory_fraction: args.gpu_memory_fraction,
                ..CudaLoadOptions::default()
            };
            let backend = CudaBackend::load(&path, ordinal, &cache, options)
                .with_context(|| format!("loading {} onto cuda:{ordinal}", path.display()))?;
            Arc::new(backend)
        }
        ResolvedDevice::Cpu { reason } => {
            if let Some(reason) = reason {
                tracing::info!(%reason, "no CUDA device; running on the CPU");
            }
            let options = LoadOptions {
                max_context: args.max_context,
                kv_type: args.kv_cache_type.unwrap_or_default(),
                ..LoadOptions::default()
            };
            let model =
                Model::from_content(&content, &file, options).with_context(|| format!("loading {}", path.display()))?;
            Arc::new(model)
        }
    };
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_str(i)).unwrap_or("").to_string();
    let (bos, eos) = (token(tokenizer.bos_token_id()), token(tokenizer.eos_token_id()));
    let template = match ChatTemplate::new(tokenizer.chat_template(), &bos, &eos) {
        Ok(t) => t,
        Err(e) => {
            // A template minijinja cannot compile should not stop the model from
            // serving raw prompts: fall back to ChatML and say so.
            tracing::warn!(error = %e, "the model's chat template does not compile; using ChatML");
            ChatTemplate::new(None, &bos, &eos)?
        }
    };
    tracing::info!(
        model = %path.display(),
        layers = model.config().n_layer,
        context = model.max_context(),
        device = %model.device().device,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(Loaded { path, model, tokenizer: Arc::new(tokenizer), template })
}

impl Loaded {
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", user));
        Ok(self.template.render(&messages, true)?)
    }

    pub fn engine(&self, config: EngineConfig) -> Engine {
        Engine::start(self.model.clone(), self.tokenizer.clone(), config)
    }
}
