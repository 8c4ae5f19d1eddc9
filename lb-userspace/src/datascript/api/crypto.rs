//! avi.crypto: CBC encryption and decryption with a key written in the script.
//!
//! `encrypt(plaintext, key[, iv[, algo]])` and `decrypt(ciphertext, key[, iv[, algo]])`:
//! - `algo` is `avi.CIPHER_AES` (the default) or `avi.CIPHER_3DES`. AES takes a 16, 24 or
//!   32-byte key (AES-128/192/256 by its length), 3DES a 24-byte key (three DES keys, EDE).
//! - The IV defaults to [`DEFAULT_IV`]. Only its first block is used (16 bytes for AES, 8 for
//!   3DES, so 3DES's default IV is "01234567"), as OpenSSL reads an IV buffer; a shorter IV is
//!   an error.
//! - PKCS#7 padding; the result is raw bytes (scripts base64 it).
//! - A wrong key, IV or algorithm is a Lua error (a script bug); a ciphertext that does not
//!   decrypt (wrong length or padding: client data) gives `nil, message`.

use std::sync::Arc;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt};
use aes::cipher::{KeyInit, KeyIvInit};
use mlua::{Lua, Table, Value, Variadic};

use super::args::{lua_str, lua_type, number};
use super::{Args, LResult, Namespace, reg, rt};

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "crypto",
    install,
    constants: &[("CIPHER_AES", CIPHER_AES), ("CIPHER_3DES", CIPHER_3DES)],
};

/// avi.CIPHER_AES / avi.CIPHER_3DES.
const CIPHER_AES: i64 = 1;
const CIPHER_3DES: i64 = 2;

/// Avi's documented default IV.
pub(super) const DEFAULT_IV: &[u8; 16] = b"0123456789012345";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    Aes128,
    Aes192,
    Aes256,
    TripleDes,
}

impl Cipher {
    fn block_len(self) -> usize {
        match self {
            Cipher::TripleDes => 8,
            _ => 16,
        }
    }
}

/// The cipher, key and IV of a call, checked.
struct Params<'a> {
    cipher: Cipher,
    key: &'a [u8],
    iv: &'a [u8],
}

fn bytes<'a>(
    v: Option<&'a Value>,
    func: &str,
    pos: usize,
) -> LResult<Option<mlua::BorrowedBytes<'a>>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_bytes())),
        Some(other) => Err(rt(format!(
            "bad argument #{pos} to '{func}' (string expected, got {})",
            lua_type(other)
        ))),
    }
}

fn params<'a>(
    func: &str,
    key: &'a [u8],
    iv: Option<&'a [u8]>,
    algo: Option<&Value>,
) -> LResult<Params<'a>> {
    let algo = match algo {
        None | Some(Value::Nil) => CIPHER_AES,
        Some(v) => match number(v) {
            Some(n) if n == CIPHER_AES as f64 => CIPHER_AES,
            Some(n) if n == CIPHER_3DES as f64 => CIPHER_3DES,
            _ => {
                return Err(rt(format!(
                    "bad argument #4 to '{func}' (avi.CIPHER_AES or avi.CIPHER_3DES expected)"
                )));
            }
        },
    };
    let cipher = match (algo, key.len()) {
        (CIPHER_AES, 16) => Cipher::Aes128,
        (CIPHER_AES, 24) => Cipher::Aes192,
        (CIPHER_AES, 32) => Cipher::Aes256,
        (CIPHER_3DES, 24) => Cipher::TripleDes,
        (CIPHER_3DES, n) => {
            return Err(rt(format!(
                "bad argument #2 to '{func}' (3DES needs a 24-byte key, got {n} bytes)"
            )));
        }
        (_, n) => {
            return Err(rt(format!(
                "bad argument #2 to '{func}' (AES needs a 16, 24 or 32-byte key, got {n} bytes)"
            )));
        }
    };
    let iv = iv.unwrap_or(DEFAULT_IV);
    let block = cipher.block_len();
    let iv = iv.get(..block).ok_or_else(|| {
        rt(format!(
            "bad argument #3 to '{func}' (IV of at least {block} bytes expected, got {})",
            iv.len()
        ))
    })?;
    Ok(Params { cipher, key, iv })
}

/// CBC encryption with PKCS#7 padding.
fn encrypt(p: &Params<'_>, plaintext: &[u8]) -> LResult<Vec<u8>> {
    fn run<C: BlockCipherEncrypt + KeyInit>(p: &Params<'_>, pt: &[u8]) -> LResult<Vec<u8>> {
        let enc = cbc::Encryptor::<C>::new_from_slices(p.key, p.iv)
            .map_err(|_| rt("encrypt: bad key or IV length"))?;
        Ok(enc.encrypt_padded_vec::<Pkcs7>(pt))
    }
    match p.cipher {
        Cipher::Aes128 => run::<aes::Aes128>(p, plaintext),
        Cipher::Aes192 => run::<aes::Aes192>(p, plaintext),
        Cipher::Aes256 => run::<aes::Aes256>(p, plaintext),
        Cipher::TripleDes => run::<des::TdesEde3>(p, plaintext),
    }
}

/// CBC decryption; None when the ciphertext does not decrypt to padded text.
fn decrypt(p: &Params<'_>, ciphertext: &[u8]) -> LResult<Option<Vec<u8>>> {
    fn run<C: BlockCipherDecrypt + KeyInit>(p: &Params<'_>, ct: &[u8]) -> LResult<Option<Vec<u8>>> {
        let dec = cbc::Decryptor::<C>::new_from_slices(p.key, p.iv)
            .map_err(|_| rt("decrypt: bad key or IV length"))?;
        Ok(dec.decrypt_padded_vec::<Pkcs7>(ct).ok())
    }
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(p.cipher.block_len()) {
        return Ok(None);
    }
    match p.cipher {
        Cipher::Aes128 => run::<aes::Aes128>(p, ciphertext),
        Cipher::Aes192 => run::<aes::Aes192>(p, ciphertext),
        Cipher::Aes256 => run::<aes::Aes256>(p, ciphertext),
        Cipher::TripleDes => run::<des::TdesEde3>(p, ciphertext),
    }
}

/// The text, key, IV and algorithm arguments of `func`.
fn call<R>(a: &Args, func: &str, f: impl FnOnce(&Params<'_>, &[u8]) -> LResult<R>) -> LResult<R> {
    let text = bytes(a.first(), func, 1)?.ok_or_else(|| {
        rt(format!(
            "bad argument #1 to '{func}' (string expected, got nil)"
        ))
    })?;
    let key = bytes(a.get(1), func, 2)?.ok_or_else(|| {
        rt(format!(
            "bad argument #2 to '{func}' (key expected, got nil)"
        ))
    })?;
    let iv = bytes(a.get(2), func, 3)?;
    let p = params(func, &key, iv.as_deref(), a.get(3))?;
    f(&p, &text)
}

fn install(lua: &Lua, sh: &Arc<crate::datascript::vm::VmShared>) -> LResult<Table> {
    let crypto = lua.create_table()?;
    reg!(lua, crypto, sh, "encrypt", |l, _s, a| {
        let out = call(&a, "encrypt", encrypt)?;
        lua_str(l, &out)
    });
    reg!(lua, crypto, sh, "decrypt", |l, _s, a| {
        match call(&a, "decrypt", decrypt)? {
            Some(plain) => Ok(Variadic::from_iter([lua_str(l, &plain)?])),
            None => Ok(Variadic::from_iter([
                Value::Nil,
                lua_str(
                    l,
                    b"decrypt: ciphertext does not decrypt with this key and IV",
                )?,
            ])),
        }
    });
    Ok(crypto)
}
