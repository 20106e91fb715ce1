package catalogfs;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;

import org.apache.spark.SparkEnv;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.ServerCall;
import org.sparkproject.connect.grpc.ServerCallHandler;
import org.sparkproject.connect.grpc.ServerInterceptor;
import org.sparkproject.connect.grpc.Status;

/**
 * Spark Connect's token check, without the token in the JVM ({@code spark.connect.grpc.interceptor.classes}).
 *
 * <p>Spark's own check reads the token from {@code spark.connect.authenticate.token} or the
 * environment, where SQL could read it back ({@code SET …}, {@code ${env:…}}). This one reads only the
 * token's SHA-256 from a 0600 file ({@code spark.catalogfs.connect.tokenHashFile}) when the server
 * starts, and compares the hash of the presented {@code Authorization: Bearer <token>} in constant
 * time. Without the file every call is refused. The token is an operator's credential: its holder
 * may write and run Python UDFs as the server's user.
 */
public final class ConnectTokenInterceptor implements ServerInterceptor {
    static final String HASH_FILE_KEY = "spark.catalogfs.connect.tokenHashFile";
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("Authorization", Metadata.ASCII_STRING_MARSHALLER);
    private final byte[] expected;

    public ConnectTokenInterceptor() {
        this.expected = readHash();
    }

    private static byte[] readHash() {
        String file = SparkEnv.get() == null ? "" : SparkEnv.get().conf().get(HASH_FILE_KEY, "");
        if (file.isEmpty()) {
            return null;
        }
        try {
            Path path = Paths.get(file);
            return HexFormat.of().parseHex(Files.readString(path, StandardCharsets.US_ASCII).trim());
        } catch (IOException | IllegalArgumentException exc) {
            return null;
        }
    }

    static byte[] sha256(String value) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(value.getBytes(StandardCharsets.UTF_8));
        } catch (NoSuchAlgorithmException exc) {
            throw new IllegalStateException(exc);
        }
    }

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
        String presented = headers.get(AUTHORIZATION);
        if (presented == null || expected == null) {
            call.close(Status.UNAUTHENTICATED.withDescription("catalogfs: no authentication token provided"),
                       new Metadata());
            return new ServerCall.Listener<ReqT>() { };
        }
        String token = presented.startsWith("Bearer ") ? presented.substring("Bearer ".length()) : presented;
        if (!MessageDigest.isEqual(expected, sha256(token.trim()))) {
            call.close(Status.UNAUTHENTICATED.withDescription("catalogfs: invalid authentication token"),
                       new Metadata());
            return new ServerCall.Listener<ReqT>() { };
        }
        return next.startCall(call, headers);
    }
}
