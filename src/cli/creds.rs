//! `leasehold cert` and `leasehold token`: a development CA with node and
//! client certificates, and bearer tokens with their tokens-file entries.
//!
//! The CA is for trying TLS out and for tests; in production, certificates
//! come from the organisation's own PKI (any X.509 CA works: nodes read
//! PEM files).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// `leasehold cert ...`
#[derive(Subcommand)]
pub enum CertCommand {
    /// Make a CA: DIR/ca.pem and its key DIR/ca-key.pem
    Ca(CaArgs),
    /// Issue a certificate signed by DIR's CA: DIR/NAME.pem, DIR/NAME-key.pem
    Issue(IssueArgs),
}

#[derive(Args)]
pub struct CaArgs {
    /// Directory to write into (created if missing)
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The CA's common name
    #[arg(long, default_value = "leasehold development CA")]
    name: String,
}

#[derive(Args)]
pub struct IssueArgs {
    /// Directory holding the CA and receiving the certificate
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The certificate's common name, and its files' names
    #[arg(long)]
    name: String,
    /// Host names and IP addresses the certificate is valid for: a node's
    /// hosts (what clients and peers dial); none for a client certificate
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    host: Vec<String>,
}

/// `leasehold token ...`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a random token; print it, and its tokens-file entry
    New(NewTokenArgs),
}

#[derive(Args)]
pub struct NewTokenArgs {
    /// The token's name, as errors and logs show it
    #[arg(long)]
    name: String,
    /// Roles of the tokens file the token takes
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Append the entry to this tokens file and print only the token
    #[arg(long, value_name = "FILE")]
    append: Option<PathBuf>,
}

pub fn cert(command: CertCommand) -> ExitCode {
    let result = match command {
        CertCommand::Ca(args) => make_ca(&args),
        CertCommand::Issue(args) => issue(&args),
    };
    finish(result)
}

pub fn token(command: TokenCommand) -> ExitCode {
    let TokenCommand::New(args) = command;
    let token = leasehold::auth::new_token();
    let entry = leasehold::auth::token_entry(&args.name, &token, &args.roles);
    let result = match &args.append {
        Some(path) => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| write!(f, "\n{entry}"))
            .map(|()| println!("{token}"))
            .map_err(|e| format!("{}: {e}", path.display())),
        None => {
            println!("token: {token}");
            println!("# the tokens file's entry for it (the file keeps only its SHA-256):");
            print!("{entry}");
            Ok(())
        }
    };
    finish(result)
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leasehold: {e}");
            ExitCode::from(super::EXIT_SERVER)
        }
    }
}

fn make_ca(args: &CaArgs) -> Result<(), String> {
    let mut params = CertificateParams::new(Vec::new()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, args.name.clone());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    write(&args.dir.join("ca.pem"), &cert.pem(), false)?;
    write(&args.dir.join("ca-key.pem"), &key.serialize_pem(), true)?;
    println!("{}", args.dir.join("ca.pem").display());
    Ok(())
}

fn issue(args: &IssueArgs) -> Result<(), String> {
    let read = |name: &str| {
        let path = args.dir.join(name);
        fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).map_err(err)?;
    let mut params = CertificateParams::new(args.host.clone()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, args.name.clone());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A node's certificate serves its ports and identifies it to its
    // peers; a client's identifies it only.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if !args.host.is_empty() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let cert_path = args.dir.join(format!("{}.pem", args.name));
    write(&cert_path, &cert.pem(), false)?;
    write(
        &args.dir.join(format!("{}-key.pem", args.name)),
        &key.serialize_pem(),
        true,
    )?;
    println!("{}", cert_path.display());
    Ok(())
}

fn err(e: rcgen::Error) -> String {
    e.to_string()
}

/// Writes `text` to `path`, readable by its owner alone when `secret`.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
