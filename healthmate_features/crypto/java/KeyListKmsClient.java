package org.healthmate.parquet;

import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.ParquetCryptoRuntimeException;
import org.apache.parquet.crypto.keytools.KeyToolkit;
import org.apache.parquet.crypto.keytools.KmsClient;

/**
 * A parquet-mr KmsClient over master keys given in the Hadoop configuration, as
 * "parquet.encryption.key.list" = "id:base64key,id:base64key". Keys are wrapped locally with
 * AES-GCM under the master key, the master key id (UTF-8) as AAD, and written as base64 of
 * nonce | ciphertext | tag: the format of parquet-mr's test InMemoryKMS, and of
 * healthmate_features.crypto.spark_kms.KeyringKmsClient (pyarrow), which reads and writes the same files.
 * Built from this source by healthmate_features.crypto.spark_kms (javac against Spark's jars).
 */
public class KeyListKmsClient implements KmsClient {
  public static final String KEY_LIST_PROPERTY_NAME = "parquet.encryption.key.list";

  private final Map<String, byte[]> masterKeys = new HashMap<>();

  @Override
  public synchronized void initialize(
      Configuration configuration, String kmsInstanceID, String kmsInstanceURL, String accessToken) {
    String[] entries = configuration.getTrimmedStrings(KEY_LIST_PROPERTY_NAME);
    if (entries == null || entries.length == 0) {
      throw new ParquetCryptoRuntimeException("No master keys: " + KEY_LIST_PROPERTY_NAME + " is not set");
    }
    for (String entry : entries) {
      int colon = entry.indexOf(':');
      if (colon <= 0) {
        throw new ParquetCryptoRuntimeException("An entry of " + KEY_LIST_PROPERTY_NAME + " is not id:base64key");
      }
      String keyId = entry.substring(0, colon).trim();
      byte[] key;
      try {
        key = Base64.getDecoder().decode(entry.substring(colon + 1).trim());
      } catch (IllegalArgumentException e) {
        throw new ParquetCryptoRuntimeException("Master key " + keyId + " is not base64");
      }
      if (key.length != 16 && key.length != 24 && key.length != 32) {
        throw new ParquetCryptoRuntimeException("Master key " + keyId + " has " + key.length + " bytes, not 16, 24 or 32");
      }
      masterKeys.put(keyId, key);
    }
  }

  private synchronized byte[] masterKey(String masterKeyIdentifier) {
    byte[] key = masterKeys.get(masterKeyIdentifier);
    if (key == null) {
      throw new ParquetCryptoRuntimeException(
          "Master key " + masterKeyIdentifier + " is not in " + KEY_LIST_PROPERTY_NAME + " (keys: "
              + String.join(", ", new java.util.TreeSet<>(masterKeys.keySet())) + ")");
    }
    return key;
  }

  @Override
  public String wrapKey(byte[] keyBytes, String masterKeyIdentifier) throws KeyAccessDeniedException {
    byte[] aad = masterKeyIdentifier.getBytes(StandardCharsets.UTF_8);
    return KeyToolkit.encryptKeyLocally(keyBytes, masterKey(masterKeyIdentifier), aad);
  }

  @Override
  public byte[] unwrapKey(String wrappedKey, String masterKeyIdentifier) throws KeyAccessDeniedException {
    byte[] aad = masterKeyIdentifier.getBytes(StandardCharsets.UTF_8);
    return KeyToolkit.decryptKeyLocally(wrappedKey, masterKey(masterKeyIdentifier), aad);
  }
}
