package catalogfs;

import java.util.Collections;
import java.util.Map;
import java.util.WeakHashMap;

import org.apache.spark.sql.SparkSession;

/**
 * The role of each JDBC session's Spark session, recorded when the session opens
 * ({@link GuardedThriftServer}) from the authenticated user's line in the users file. SQL cannot
 * change it (it is not a setting). A session without a role is a reader.
 */
final class SessionRoles {
    static final String OPERATOR = "operator";
    static final String READER = "reader";
    private static final Map<SparkSession, String> ROLES = Collections.synchronizedMap(new WeakHashMap<>());

    private SessionRoles() {
    }

    static void record(SparkSession session, String role) {
        ROLES.put(session, role);
    }

    static boolean operator(SparkSession session) {
        return OPERATOR.equals(ROLES.get(session));
    }
}
