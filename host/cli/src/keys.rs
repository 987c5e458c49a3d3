//! `kiln keys create`: a new API key, printed once with the configuration
//! entry that admits it (which holds only the key's sha256).

use anyhow::Result;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a new random key and its `[[keys]]` entry for kiln.toml.
    Create {
        /// Who the key is for (shown in logs; letters, digits, '-', '_', '.').
        #[arg(long, default_value = "default")]
        name: String,
        /// `generate` (inference), `metrics` (scraping `/metrics` only) or `admin`
        /// (everything, plugin administration too).
        #[arg(long, value_enum, default_value_t = ScopeArg::Generate)]
        scope: ScopeArg,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ScopeArg {
    Generate,
    Metrics,
    Admin,
}

pub fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create { name, scope } => {
            anyhow::ensure!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "--name {name:?}: use letters, digits, '-', '_' or '.'"
            );
            let key = kiln_access::generate_key()?;
            let scope = match scope {
                ScopeArg::Generate => "generate",
                ScopeArg::Metrics => "metrics",
                ScopeArg::Admin => "admin",
            };
            println!("{key}");
            eprintln!("The key above is shown once; kiln keeps only its hash. Add this to the config file:");
            eprintln!();
            eprintln!(
                "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"{scope}\"]",
                kiln_access::hash_key(&key)
            );
            Ok(())
        }
    }
}
