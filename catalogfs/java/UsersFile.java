package catalogfs;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFilePermission;
import java.security.MessageDigest;
import java.security.spec.KeySpec;
import java.util.HexFormat;

import javax.crypto.SecretKeyFactory;
import javax.crypto.spec.PBEKeySpec;

import org.apache.spark.SparkEnv;

/**
 * The users of the JDBC endpoint: a text file (path in {@code spark.catalogfs.jdbc.usersFile}),
 * one user a line, {@code name:role:pbkdf2-sha256:iterations:salt-hex:hash-hex}, written by
 * {@code catalogfs serve-users} (catalogfs/server_auth.py). It is read at every login, so users
 * added or removed apply to the next connection. A file that others than its owner can read or
 * write is not trusted: every login is refused until its mode is fixed (0600).
 */
final class UsersFile {
    static final String PATH_KEY = "spark.catalogfs.jdbc.usersFile";
    static final String SCHEME = "pbkdf2-sha256";

    private UsersFile() {
    }

    static Path path() {
        String value = SparkEnv.get() == null ? "" : SparkEnv.get().conf().get(PATH_KEY, "");
        return value.isEmpty() ? null : Paths.get(value);
    }

    /** The role of {@code user} when {@code password} is theirs, else null. */
    static String role(String user, String password) throws IOException {
        if (user == null || password == null) {
            return null;
        }
        String[] f = line(user);
        if (f == null) {
            pbkdf2(password, new byte[16], 100_000, 32);  // an unknown user costs what a known one does
            return null;
        }
        byte[] expected = HexFormat.of().parseHex(f[5]);
        byte[] actual = pbkdf2(password, HexFormat.of().parseHex(f[4]), Integer.parseInt(f[3]), expected.length);
        return MessageDigest.isEqual(expected, actual) ? f[1] : null;
    }

    /** The role the file gives {@code user} (who has logged in already), or null. */
    static String roleOfUser(String user) throws IOException {
        String[] f = line(user);
        return f == null ? null : f[1];
    }

    /** The fields of {@code user}'s line, or null (no file configured, no such user). */
    private static String[] line(String user) throws IOException {
        Path file = path();
        if (file == null) {
            return null;
        }
        for (PosixFilePermission p : Files.getPosixFilePermissions(file)) {
            if (p.name().startsWith("GROUP_") || p.name().startsWith("OTHERS_")) {
                throw new IOException("catalogfs: the users file " + file + " is readable or writable by others ("
                    + "chmod 600 it); every login is refused until then");
            }
        }
        for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
            String[] f = line.trim().split(":");
            if (f.length == 6 && !line.startsWith("#") && f[0].equals(user) && f[2].equals(SCHEME)) {
                return f;
            }
        }
        return null;
    }

    static byte[] pbkdf2(String password, byte[] salt, int iterations, int length) {
        try {
            KeySpec spec = new PBEKeySpec(password.toCharArray(), salt, iterations, length * 8);
            return SecretKeyFactory.getInstance("PBKDF2WithHmacSHA256").generateSecret(spec).getEncoded();
        } catch (java.security.GeneralSecurityException exc) {
            throw new IllegalStateException(exc);
        }
    }
}
